package outbound

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
)

// cursorFrame is a frame as a frameCursor tells it: its header's
// fields, and the payload bytes step gave for it.
type cursorFrame struct {
	typ, flags byte
	stream     uint32
	length     uint32
	payload    []byte
}

func (f cursorFrame) equal(g cursorFrame) bool {
	return f.typ == g.typ && f.flags == g.flags && f.stream == g.stream && f.length == g.length && bytes.Equal(f.payload, g.payload)
}

func (f cursorFrame) String() string {
	return fmt.Sprintf("{type %#x flags %#x stream %d length %d payload %x}", f.typ, f.flags, f.stream, f.length, f.payload)
}

// cursorWalk has a new frameCursor step through stream cut into pieces
// of the sizes split: the frames it told, and where it was left. It
// fails t if a step breaks step's contract: bytes taken that are not
// b's first, payload bytes outside a frame's payload, both header and
// payload bytes, no progress.
func cursorWalk(t testing.TB, stream []byte, split []int) ([]cursorFrame, frameCursor) {
	t.Helper()
	var c frameCursor
	var frames []cursorFrame
	n := 0
	for _, k := range split {
		b := stream[n : n+k]
		n += k
		for len(b) > 0 {
			rest, payload, header := c.step(b)
			took := len(b) - len(rest)
			switch {
			case took <= 0 || !bytes.Equal(rest, b[took:]):
				t.Fatalf("step(%x) left %x: not a tail of what it was given, or no progress", b, rest)
			case len(payload) > 0 && (header || !bytes.Equal(payload, b[:took])):
				t.Fatalf("step(%x) took %d bytes, gave the payload %x, header %v", b, took, payload, header)
			case len(payload) > 0 && len(frames) == 0:
				t.Fatalf("step(%x) gave the payload %x before any header", b, payload)
			case header:
				frames = append(frames, cursorFrame{c.frameType(), c.flags(), c.stream(), c.left, nil})
			case len(payload) > 0:
				f := &frames[len(frames)-1]
				if f.payload = append(f.payload, payload...); uint32(len(f.payload)) > f.length {
					t.Fatalf("step gave %d payload bytes for a frame of %d", len(f.payload), f.length)
				}
			}
			b = rest
		}
	}
	return frames, c
}

// TestFrameCursor: a frameCursor tells each frame's header once whole,
// then gives exactly its payload, across frames in one buffer, headers
// and payloads cut at every byte boundary and into pieces of every
// size, empty payloads, a stream ending inside a header or a payload.
func TestFrameCursor(t *testing.T) {
	headers := rawFrame(0x1, 0x5, 1, []byte{0x82, 0x86, 0x84})
	looksLikeHeaders := rawFrame(0x0, 0x1, 3, headers) // a DATA frame holding a HEADERS frame's bytes
	for _, tc := range []struct {
		name   string
		stream []byte
		want   []cursorFrame
		// Where the cursor is left: header bytes so far, payload bytes
		// yet to come.
		hn   int
		left uint32
	}{
		{name: "nothing"},
		{"an empty SETTINGS", rawFrame(0x4, 0x1, 0, nil), []cursorFrame{{0x4, 0x1, 0, 0, nil}}, 0, 0},
		{"empty payloads in a row",
			slices.Concat(rawFrame(0x4, 0x1, 0, nil), rawFrame(0x0, 0x1, 1, nil), rawFrame(0x0, 0x1, 3, nil)),
			[]cursorFrame{{0x4, 0x1, 0, 0, nil}, {0x0, 0x1, 1, 0, nil}, {0x0, 0x1, 3, 0, nil}}, 0, 0},
		{"frames in one buffer",
			slices.Concat(rawFrame(0x4, 0, 0, []byte{0, 3, 0, 0, 0, 100}), headers, looksLikeHeaders, rawFrame(0x3, 0, 1, []byte{0, 0, 0, 1})),
			[]cursorFrame{
				{0x4, 0, 0, 6, []byte{0, 3, 0, 0, 0, 100}},
				{0x1, 0x5, 1, 3, []byte{0x82, 0x86, 0x84}},
				{0x0, 0x1, 3, uint32(len(headers)), headers},
				{0x3, 0, 1, 4, []byte{0, 0, 0, 1}},
			}, 0, 0},
		{"the reserved bit set", rawFrame(0x8, 0, 1<<31|7, []byte{0, 0, 1, 0}), []cursorFrame{{0x8, 0, 7, 4, []byte{0, 0, 1, 0}}}, 0, 0},
		{"every bit of type, flags and stream set", rawFrame(0xff, 0xff, 0xffffffff, []byte{1}), []cursorFrame{{0xff, 0xff, 0x7fffffff, 1, []byte{1}}}, 0, 0},
		{"ending inside a header", slices.Concat(headers, headers[:5]), []cursorFrame{{0x1, 0x5, 1, 3, []byte{0x82, 0x86, 0x84}}}, 5, 0},
		{"ending inside a payload", headers[:10], []cursorFrame{{0x1, 0x5, 1, 3, []byte{0x82}}}, 0, 2},
		{"ending right after a header", headers[:9], []cursorFrame{{0x1, 0x5, 1, 3, nil}}, 0, 3},
		{"the largest length", []byte{0xff, 0xff, 0xff, 0x0, 0, 0, 0, 0, 1, 7, 7}, []cursorFrame{{0x0, 0, 1, 1<<24 - 1, []byte{7, 7}}}, 0, 1<<24 - 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			splits := walkSplits(len(tc.stream))
			for _, split := range splits {
				frames, c := cursorWalk(t, tc.stream, split)
				if !slices.EqualFunc(frames, tc.want, cursorFrame.equal) {
					t.Fatalf("pieces of %v: the cursor told %v, want %v", split, frames, tc.want)
				}
				if c.hn != tc.hn || c.left != tc.left {
					t.Fatalf("pieces of %v: the cursor was left with %d header bytes, %d payload bytes to come; want %d, %d", split, c.hn, c.left, tc.hn, tc.left)
				}
			}
		})
	}
}

// TestFrameCursorNoAlloc: stepping through frames allocates nothing
// (h2Conn's walks run on every read and write of the h2c transport).
func TestFrameCursorNoAlloc(t *testing.T) {
	stream := slices.Concat(rawFrame(0x4, 0, 0, []byte{0, 3, 0, 0, 0, 100}), rawFrame(0x1, 0x5, 1, []byte{0x82, 0x86}), rawFrame(0x0, 0x1, 1, nil))
	var c frameCursor
	var headers int
	allocs := testing.AllocsPerRun(100, func() {
		for off := 0; off < len(stream); off += 7 { // headers and payloads cut
			for b := stream[off:min(off+7, len(stream))]; len(b) > 0; {
				var header bool
				if b, _, header = c.step(b); header {
					headers++
				}
			}
		}
	})
	if allocs != 0 || headers != 3*101 {
		t.Errorf("%v allocations a walk, %d headers told; want none, %d", allocs, headers, 3*101)
	}
}

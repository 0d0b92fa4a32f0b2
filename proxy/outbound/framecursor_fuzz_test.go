package outbound

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"

	"golang.org/x/net/http2"
)

// FuzzFrameCursor: whatever bytes an upstream or Go's transport send,
// cut into whatever pieces, a frameCursor tells the frames
// golang.org/x/net/http2's Framer reads from them, each with its
// payload, and is left where the Framer is: inside a header or a
// payload at the end.
func FuzzFrameCursor(f *testing.F) {
	frames := func(write func(fr *http2.Framer) error) []byte { return h2Frames(f, write) }
	settings := frames(func(fr *http2.Framer) error {
		return fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1})
	})
	headers := frames(func(fr *http2.Framer) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x82, 0x86}, EndHeaders: true})
	})
	data := frames(func(fr *http2.Framer) error { return fr.WriteData(1, true, headers) })
	rst := frames(func(fr *http2.Framer) error { return fr.WriteRSTStream(1, http2.ErrCodeProtocol) })
	ack := frames(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
	for _, seed := range []struct{ stream, cuts []byte }{
		{nil, nil},
		{settings, []byte{0}},
		{slices.Concat(settings, ack, headers, data, rst), []byte{4, 9, 0, 200}},
		{slices.Concat(headers, data[:12]), []byte{1}},
		{rawFrame(0x3, 0, 1<<31|3, []byte{0, 0, 0, 1, 2}), []byte{8, 1}},
		{[]byte("HTTP/1.1 400 Bad Request\r\n\r\n"), []byte{255}},
	} {
		f.Add(seed.stream, seed.cuts)
	}
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		got, c := cursorWalk(t, stream, pieces(len(stream), cuts))
		want, hn, left := framerReads(t, stream)
		if !slices.EqualFunc(got, want, cursorFrame.equal) {
			t.Fatalf("the cursor told %v, the Framer read %v", got, want)
		}
		if c.hn != hn || c.left != left {
			t.Fatalf("the cursor was left with %d header bytes, %d payload bytes to come; the Framer with %d, %d", c.hn, c.left, hn, left)
		}
	})
}

// pieces cuts n bytes into pieces of the sizes cuts gives in turn (one
// byte each, 0 standing for 1), all n in one if there are none.
func pieces(n int, cuts []byte) []int {
	if len(cuts) == 0 {
		return []int{n}[:min(n, 1)]
	}
	var split []int
	for i := 0; n > 0; i++ {
		k := min(max(int(cuts[i%len(cuts)]), 1), n)
		split = append(split, k)
		n -= k
	}
	return split
}

// framerReads is what a Framer reads from stream, not judging frames
// (AllowIllegalReads: an h2Conn follows any): the frames whole in it,
// then, if it ends inside a frame, the header bytes there (hn), or the
// frame whose payload it ends in, with the bytes of the payload still
// to come (left).
func framerReads(t *testing.T, stream []byte) (frames []cursorFrame, hn int, left uint32) {
	r := bytes.NewReader(stream)
	fr := http2.NewFramer(nil, r)
	fr.AllowIllegalReads = true
	fr.SetMaxReadFrameSize(1<<24 - 1)
	for {
		off := len(stream) - r.Len()
		fh, err := fr.ReadFrameHeader()
		switch {
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return frames, len(stream) - off, 0
		case err != nil:
			t.Fatalf("the Framer read a header at byte %d: %v", off, err)
		}
		payload := stream[off+9:]
		f := cursorFrame{byte(fh.Type), byte(fh.Flags), fh.StreamID, fh.Length, payload[:min(len(payload), int(fh.Length))]}
		frames = append(frames, f)
		if int(fh.Length) > len(payload) {
			return frames, 0, fh.Length - uint32(len(payload))
		}
		// The Framer may refuse the frame (a DATA on stream 0, a PING
		// not of 8 bytes, padding longer than the payload, with
		// io.ErrUnexpectedEOF...) but reads all its payload first.
		_, err = fr.ReadFrameForHeader(fh)
		if end := len(stream) - r.Len(); end != off+9+int(fh.Length) {
			t.Fatalf("the Framer read %v from byte %d to %d (%v)", fh, off, end, err)
		}
	}
}

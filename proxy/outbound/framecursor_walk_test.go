package outbound

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"testing"

	"golang.org/x/net/http2"
)

// h2Frames is what fr writes, as bytes (attrFrames, for benchmarks too).
func h2Frames(tb testing.TB, write func(fr *http2.Framer) error) []byte {
	tb.Helper()
	var b bytes.Buffer
	if err := write(http2.NewFramer(&b, nil)); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

// walkFrame is one frame of the bytes an h2Conn walks, and what it
// should make of it once it has gone through: the stream a HEADERS
// opens (sent), the first SETTINGS' acknowledgement (ack), the stream of
// an RST_STREAM with PROTOCOL_ERROR (reset).
type walkFrame struct {
	b     []byte
	sent  uint32 // once its header went
	ack   bool   // once its header went
	reset uint32 // once its payload has been read
}

// rawFrame is a frame written by hand, for what Go's Framer refuses to
// write: a reserved bit set, an RST_STREAM of the wrong length.
func rawFrame(typ, flags byte, stream uint32, payload []byte) []byte {
	b := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[5:], stream)
	return append(b, payload...)
}

// walkWritten is a client's frames past its preface: requests' HEADERS
// among frames whose payloads hold what looks like one.
func walkWritten(t testing.TB) []walkFrame {
	fake := rawFrame(0x1, 0x4, 9, []byte{0x82}) // a HEADERS of stream 9, as bytes
	return []walkFrame{
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WriteSettings() })},
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, 1<<20) })},
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WriteSettingsAck() }), ack: true},
		{b: h2Frames(t, func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x83, 0x86}, EndHeaders: true})
		}), sent: 1},
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WriteData(1, true, fake) })},
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte(fake[:8])) })},
		{b: h2Frames(t, func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: []byte{0x82}})
		}), sent: 3},
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WriteContinuation(3, true, fake) })},
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WriteData(3, false, nil) })},
		{b: rawFrame(0x1, 0x5, 1<<31|5, []byte{0x82}), sent: 5}, // the reserved bit is not the stream's
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WriteRSTStream(5, http2.ErrCodeCancel) })},
	}
}

// walkRead is an upstream's frames: resets with PROTOCOL_ERROR among
// others, and payloads holding what looks like one.
func walkRead(t testing.TB) []walkFrame {
	fake := rawFrame(0x3, 0, 9, []byte{0, 0, 0, 1}) // an RST_STREAM PROTOCOL_ERROR of stream 9, as bytes
	rst := func(id uint32, code http2.ErrCode) []byte {
		return h2Frames(t, func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
	}
	return []walkFrame{
		{b: h2Frames(t, func(fr *http2.Framer) error {
			return fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 100})
		})},
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WriteSettingsAck() })},
		{b: rst(1, http2.ErrCodeProtocol), reset: 1},
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WriteData(3, false, fake) })},
		{b: rst(3, http2.ErrCodeCancel)},
		{b: rawFrame(0x3, 0, 5, []byte{0, 0, 0, 1, 0, 0, 0, 1})}, // not 4 bytes: no error code
		{b: rawFrame(0x3, 0, 7, []byte{0, 0, 1})},
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WriteData(5, true, nil) })},
		{b: rst(11, http2.ErrCodeProtocol), reset: 11},
		{b: rst(13, http2.ErrCodeRefusedStream)},
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WritePing(true, [8]byte(fake[:8])) })},
		{b: rawFrame(0x3, 0, 1<<31|15, []byte{0, 0, 0, 1}), reset: 15},
		{b: h2Frames(t, func(fr *http2.Framer) error { return fr.WriteGoAway(15, http2.ErrCodeProtocol, nil) })},
	}
}

// walkWant is what an h2Conn should have made of the first n bytes of
// frames: the last stream sent, whether the acknowledgement went, the
// streams reset.
func walkWant(frames []walkFrame, n int) (sent uint32, ack bool, resets []uint32) {
	off := 0
	for _, f := range frames {
		if off+9 <= n {
			if f.sent != 0 {
				sent = f.sent
			}
			ack = ack || f.ack
		}
		if off += len(f.b); off <= n && f.reset != 0 {
			resets = append(resets, f.reset)
		}
	}
	return sent, ack, resets
}

// walkSplits are the ways a test splits the bytes of frames into reads
// or writes: at every byte boundary (two pieces), and into pieces of
// every size.
func walkSplits(n int) [][]int {
	var splits [][]int
	for cut := 1; cut < n; cut++ {
		splits = append(splits, []int{cut, n - cut})
	}
	for size := 1; size <= n; size++ {
		var s []int
		for left := n; left > 0; left -= size {
			s = append(s, min(size, left))
		}
		splits = append(splits, s)
	}
	return splits
}

// TestH2ConnWalksSplit: however the frames are split into writes or
// reads, after each an h2Conn tells the stream of the last HEADERS
// written (and no stream of a HEADERS-looking payload, nor its reserved
// bit), the first SETTINGS acknowledgement written, and the streams
// reset with PROTOCOL_ERROR (only RST_STREAMs of 4 bytes, none
// RST-looking in a payload), once each.
func TestH2ConnWalksSplit(t *testing.T) {
	t.Run("written", func(t *testing.T) {
		frames := walkWritten(t)
		written := []byte(h2Preface)
		for _, f := range frames {
			written = append(written, f.b...)
		}
		for _, split := range walkSplits(len(written)) {
			c := &h2Conn{Conn: &chunkConn{}, settled: make(chan struct{})}
			n := 0
			for _, k := range split {
				if got, err := c.Write(written[n : n+k]); got != k || err != nil {
					t.Fatalf("Write = %d, %v", got, err)
				}
				n += k
				sent, ack, _ := walkWant(frames, n-len(h2Preface))
				if got := c.sent.Load(); got != sent {
					t.Fatalf("writes of %v: after %d bytes, sent %d, want %d", split, n, got, sent)
				}
				if got := c.settling.Load(); got != ack {
					t.Fatalf("writes of %v: after %d bytes, settled %v, want %v", split, n, got, ack)
				}
			}
		}
	})
	t.Run("read", func(t *testing.T) {
		frames := walkRead(t)
		var read []byte
		for _, f := range frames {
			read = append(read, f.b...)
		}
		for _, split := range walkSplits(len(read)) {
			conn := &chunkConn{}
			c := &h2Conn{Conn: conn}
			buf := make([]byte, len(read))
			n := 0
			for _, k := range split {
				conn.b = read[n : n+k]
				if got, err := c.Read(buf); got != k || err != nil {
					t.Fatalf("Read = %d, %v", got, err)
				}
				n += k
				_, _, want := walkWant(frames, n)
				c.mu.Lock()
				got := slices.Clone(c.resets)
				c.mu.Unlock()
				if !slices.Equal(got, want) || c.reset.Load() != (len(want) > 0) {
					t.Fatalf("reads of %v: after %d bytes, reset %v %v, want %v", split, n, c.reset.Load(), got, want)
				}
			}
		}
	})
}

// chunkConn is the upstream's side of an h2Conn, scripted: its reads give
// b, then io.EOF, and its writes go nowhere.
type chunkConn struct {
	net.Conn
	b []byte
}

func (*chunkConn) Write(p []byte) (int, error) { return len(p), nil }

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.b)
	c.b = c.b[n:]
	return n, nil
}

// BenchmarkH2ConnWalk: the frame walks of one unary gRPC call on an
// h2Conn, as Go's transport writes and reads them (its HEADERS, then its
// DATA; the answer's HEADERS, DATA and trailers in one read, then a
// PING and a WINDOW_UPDATE), without the network.
func BenchmarkH2ConnWalk(b *testing.B) {
	msg := make([]byte, 5+64)
	req := [][]byte{
		h2Frames(b, func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: make([]byte, 120), EndHeaders: true})
		}),
		h2Frames(b, func(fr *http2.Framer) error { return fr.WriteData(1, true, msg) }),
	}
	resp := [][]byte{
		slices.Concat(
			h2Frames(b, func(fr *http2.Framer) error {
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: make([]byte, 40), EndHeaders: true})
			}),
			h2Frames(b, func(fr *http2.Framer) error { return fr.WriteData(1, false, msg) }),
			h2Frames(b, func(fr *http2.Framer) error {
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: make([]byte, 30), EndHeaders: true, EndStream: true})
			}),
		),
		slices.Concat(
			h2Frames(b, func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{}) }),
			h2Frames(b, func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, 69) }),
		),
	}
	conn := &chunkConn{}
	c := &h2Conn{Conn: conn}
	if _, err := c.Write([]byte(h2Preface)); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		for _, w := range req {
			if _, err := c.Write(w); err != nil {
				b.Fatal(err)
			}
		}
		for _, r := range resp {
			conn.b = r
			if _, err := c.Read(buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	if c.sent.Load() != 1 || c.reset.Load() {
		b.Fatalf("sent %d, reset %v: the walks lost their place", c.sent.Load(), c.reset.Load())
	}
}

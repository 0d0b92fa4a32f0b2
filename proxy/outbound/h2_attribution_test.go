package outbound

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestH2ConnSent: h2Conn tells the stream of the last HEADERS frame
// written, past the client preface, however the frames are split into
// writes, and takes no other frame, nor bytes inside a payload, for one.
func TestH2ConnSent(t *testing.T) {
	settings := h2Frames(t, func(fr *http2.Framer) error { return fr.WriteSettings() })
	headers := func(id uint32, end bool) []byte {
		return h2Frames(t, func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: []byte{0x82, 0x86}, EndHeaders: end})
		})
	}
	continuation := h2Frames(t, func(fr *http2.Framer) error { return fr.WriteContinuation(5, true, []byte{0x84}) })
	// A DATA payload holding what a HEADERS frame of stream 9 looks like.
	data := h2Frames(t, func(fr *http2.Framer) error {
		return fr.WriteData(3, true, []byte{0, 0, 2, 1, 4, 0, 0, 0, 9, 0x82, 0x86})
	})
	rst := h2Frames(t, func(fr *http2.Framer) error { return fr.WriteRSTStream(7, http2.ErrCodeCancel) })
	for _, tc := range []struct {
		name    string
		written []byte
		want    uint32
	}{
		{"the preface and settings", slices.Concat([]byte(http2.ClientPreface), settings), 0},
		{"one request", slices.Concat([]byte(http2.ClientPreface), settings, headers(1, true)), 1},
		{"a body after", slices.Concat([]byte(http2.ClientPreface), settings, headers(3, true), data), 3},
		{"headers then continuation", slices.Concat([]byte(http2.ClientPreface), settings, headers(1, true), headers(5, false), continuation), 5},
		{"another stream's reset after", slices.Concat([]byte(http2.ClientPreface), headers(3, true), rst), 3},
	} {
		for _, size := range []int{1, 2, 9, 24, 25, 4096} {
			t.Run(fmt.Sprintf("%s, writes of %d", tc.name, size), func(t *testing.T) {
				c := &h2Conn{Conn: &chunkConn{}}
				for b := tc.written; len(b) > 0; {
					k := min(size, len(b))
					if n, err := c.Write(b[:k]); n != k || err != nil {
						t.Fatalf("Write = %d, %v", n, err)
					}
					b = b[k:]
				}
				if got := c.sent.Load(); got != tc.want {
					t.Errorf("sent %d, want %d", got, tc.want)
				}
			})
		}
	}
}

// attrRead has c read b, the upstream's frames.
func attrRead(c *h2Conn, b []byte) {
	c.Conn = &chunkConn{b: b}
	buf := make([]byte, 7) // frames split across reads
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// TestH2TryStreamReset: a try's failed dial is the reset of its stream
// only when the upstream reset with PROTOCOL_ERROR the stream that try
// wrote: not another call's on the same connection, not a stream of the
// same number on another connection, not a connection the try was placed
// on and wrote nothing on (it found it unusable), not another error code.
// And only a refusal: a dial past its time stays a timeout, the sidecar's
// own want of descriptors its own.
func TestH2TryStreamReset(t *testing.T) {
	rst := func(id uint32, code http2.ErrCode) []byte {
		return h2Frames(t, func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
	}
	settings := h2Frames(t, func(fr *http2.Framer) error { return fr.WriteSettings() })
	refused := &dialError{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
	for _, tc := range []struct {
		name string
		// Two connections the try is placed on in turn: the stream it
		// writes on each (0: none), and the upstream's frames on each.
		wrote [2]uint32
		read  [2][]byte
		err   error // the dial's
		want  policy.Class
	}{
		{"its stream reset", [2]uint32{3, 0}, [2][]byte{slices.Concat(settings, rst(3, http2.ErrCodeProtocol)), nil}, refused, policy.ClassReset},
		{"its stream reset, on the first of two", [2]uint32{1, 1}, [2][]byte{rst(1, http2.ErrCodeProtocol), rst(3, http2.ErrCodeProtocol)}, refused, policy.ClassReset},
		{"another call's stream reset", [2]uint32{3, 0}, [2][]byte{rst(1, http2.ErrCodeProtocol), nil}, refused, policy.ClassConnectFailure},
		{"its number reset on the other connection", [2]uint32{3, 0}, [2][]byte{rst(1, http2.ErrCodeProtocol), rst(3, http2.ErrCodeProtocol)}, refused, policy.ClassConnectFailure},
		{"placed on a reset connection, nothing written", [2]uint32{0, 0}, [2][]byte{rst(1, http2.ErrCodeProtocol), nil}, refused, policy.ClassConnectFailure},
		{"its stream refused", [2]uint32{3, 0}, [2][]byte{rst(3, http2.ErrCodeRefusedStream), nil}, refused, policy.ClassConnectFailure},
		{"its stream reset, the dial timed out", [2]uint32{3, 0}, [2][]byte{rst(3, http2.ErrCodeProtocol), nil}, &dialError{errPerTryTimeout}, policy.ClassTimeout},
		{"its stream reset, no descriptors", [2]uint32{3, 0}, [2][]byte{rst(3, http2.ErrCodeProtocol), nil}, &dialError{&localError{syscall.EMFILE}}, policy.ClassConnectFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			try := &h2Try{Context: t.Context()}
			for i := range 2 {
				c := &h2Conn{Conn: &chunkConn{}}
				try.gotConn(httptrace.GotConnInfo{Conn: c})
				if id := tc.wrote[i]; id != 0 {
					if _, err := c.Write(slices.Concat([]byte(http2.ClientPreface), h2Frames(t, func(fr *http2.Framer) error {
						return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: []byte{0x82}, EndHeaders: true, EndStream: true})
					}))); err != nil {
						t.Fatal(err)
					}
					try.wroteHeaders()
				}
				attrRead(c, tc.read[i])
			}
			err := try.dialFailed(tc.err)
			if got, _ := classify(err, t.Context(), t.Context()); got != tc.want {
				t.Errorf("the try failed as %v (%v), want %v", got, err, tc.want)
			}
		})
	}
}

// TestH2TriesBound1xx: on the HTTP/2 path too, at most max1xx 1xx
// responses reach the request's hook, without the upstream's request ID
// (the job of informational on the HTTP/1 one, which h2Tries does
// itself there).
func TestH2TriesBound1xx(t *testing.T) {
	for _, hints := range []int{max1xx, max1xx + 1} {
		t.Run(fmt.Sprint(hints, " hints"), func(t *testing.T) {
			addr := hintingH2C(t, hints)
			h2 := newH2CTransport(func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			})
			t.Cleanup(h2.CloseIdleConnections)
			var got []string
			ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				got = append(got, fmt.Sprint(code, " ", h.Get("Link"), h.Get(requestIDKey)))
				return nil
			}})
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := h2Tries{h2}.RoundTrip(req)
			if err == nil {
				resp.Body.Close()
			}
			if hints > max1xx {
				// Go's HTTP/2 transport resets the stream with the hook's
				// error, as text.
				if err == nil || !strings.Contains(err.Error(), errTooMany1xx.Error()) {
					t.Errorf("RoundTrip: %v, want %v", err, errTooMany1xx)
				}
			} else if err != nil || resp.StatusCode != http.StatusOK {
				t.Errorf("RoundTrip: %v, want the 200", err)
			}
			if len(got) != min(hints, max1xx) || got[0] != "103 </a.css>" {
				t.Errorf("the hook got %q, want %d of 103 </a.css> with no request ID", got, min(hints, max1xx))
			}
		})
	}
}

// hintingH2C is an h2c upstream answering each request with hints 103s
// (a Link, and a request ID) and then 200.
func hintingH2C(t *testing.T, hints int) string {
	t.Helper()
	block := func(fields ...string) []byte {
		var b bytes.Buffer
		e := hpack.NewEncoder(&b)
		for i := 0; i < len(fields); i += 2 {
			_ = e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return b.Bytes()
	}
	addr, _ := proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		serveH2c(c, func(fr *http2.Framer, f http2.Frame) error {
			h, ok := f.(*http2.MetaHeadersFrame)
			if !ok {
				return nil
			}
			for range hints {
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: block(":status", "103", "link", "</a.css>", "x-request-id", "theirs"), EndHeaders: true}); err != nil {
					return err
				}
			}
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: block(":status", "200"), EndHeaders: true, EndStream: true})
		})
	})
	return addr
}

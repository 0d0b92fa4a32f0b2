package outbound_test

// The flow-control windows of the sidecar's HTTP/2 connections to
// upstreams (docs/grpc.md, "Limits"). Go's transport gives an upstream
// connection window back only as the sidecar reads a body, which it does
// no faster than the app takes the answer: a stream whose app stopped
// reading keeps its share of the connection's window. With the
// connection's window equal to one stream's (1 MiB), two such streams,
// from two app connections, left none: every other call to the
// destination, from every app connection, hung to its own deadline,
// recorded as the client's cancels.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/outbound"
	"golang.org/x/net/http2"
)

// h2Sniffer is an upstream listener that reads, from the first bytes of
// each connection the sidecar opens to it, the windows the sidecar gives:
// SETTINGS_INITIAL_WINDOW_SIZE (each stream's) and the connection's
// (65,535 plus the WINDOW_UPDATE on stream 0 that follows the SETTINGS).
type h2Sniffer struct {
	net.Listener
	seen chan struct{} // closed once the first connection's windows are read

	mu           sync.Mutex
	conns        int
	streamWindow uint32
	connWindow   uint32
}

func (l *h2Sniffer) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.conns++
	first := l.conns == 1
	l.mu.Unlock()
	if !first {
		return c, nil
	}
	return &sniffConn{Conn: c, l: l}, nil
}

func (l *h2Sniffer) windows() (stream, conn uint32, conns int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.streamWindow, l.connWindow, l.conns
}

// sniffConn keeps what the server reads until the preface, the SETTINGS
// and the connection's WINDOW_UPDATE are in.
type sniffConn struct {
	net.Conn
	l    *h2Sniffer
	buf  []byte
	done bool
}

func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.done && n > 0 {
		c.buf = append(c.buf, p[:n]...)
		c.parse()
	}
	return n, err
}

func (c *sniffConn) parse() {
	pre := len(http2.ClientPreface)
	if len(c.buf) < pre {
		return
	}
	if len(c.buf) > 1<<20 { // never found: TestH2UpstreamWindows says so
		c.done = true
		return
	}
	fr := http2.NewFramer(io.Discard, bytes.NewReader(c.buf[pre:]))
	stream, conn := uint32(0), uint32(0)
	for stream == 0 || conn == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			return // a frame not all in yet
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				stream = 65535
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					stream = v
				}
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				conn = 65535 + f.Increment
			}
		}
	}
	c.done, c.buf = true, nil
	c.l.mu.Lock()
	c.l.streamWindow, c.l.connWindow = stream, conn
	c.l.mu.Unlock()
	close(c.l.seen)
}

// startSniffedH2CUpstream is an h2c server on an h2Sniffer, running the
// handler h makes (which may ask the sniffer for the windows).
func startSniffedH2CUpstream(t *testing.T, h func(*h2Sniffer) http.HandlerFunc) (string, *h2Sniffer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sn := &h2Sniffer{Listener: ln, seen: make(chan struct{})}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h(sn), Protocols: &p}
	go func() { _ = srv.Serve(sn) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), sn
}

// getOK is one call to the upstream's /ok through the sidecar on c.
func getOK(c *http.Client, sidecar string, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+sidecar+"/ok", nil)
	if err != nil {
		return err
	}
	req.Host = flowSvc
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || string(b) != "fine" {
		return fmt.Errorf("answer %d %q, want 200 %q", resp.StatusCode, b, "fine")
	}
	return nil
}

// TestH2UpstreamWindows reads the windows the sidecar gives an upstream:
// the figures of docs/grpc.md, "Limits", and a connection window with
// room for as many stalled streams as Go's server lets a connection
// carry. Go documents a connection window under 4 MiB and takes up to
// 2^31-1: a Go that clamped it would fail here.
func TestH2UpstreamWindows(t *testing.T) {
	up, sn := startSniffedH2CUpstream(t, func(*h2Sniffer) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("fine")) }
	})
	sc := startSidecar(t, "", resolve(up, flowSvc))
	if err := getOK(h2cClient(t), sc.Addr, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	<-sn.seen // the call above came over that connection
	stream, conn, _ := sn.windows()
	for _, tc := range []struct {
		what      string
		got, want uint64
	}{
		{"stream window (SETTINGS_INITIAL_WINDOW_SIZE)", uint64(stream), outbound.H2UpstreamStreamWindow},
		{"connection window", uint64(conn), 65535 + outbound.H2UpstreamConnWindow},
		{"connection window, in stream windows", uint64(conn) / max(uint64(stream), 1), outbound.H2MaxConcurrentStreams},
	} {
		if tc.got != tc.want {
			t.Errorf("%s %d, want %d", tc.what, tc.got, tc.want)
		}
	}
}

// TestH2StalledStreamsKeepDestination: app streams that stop reading
// (from app connections of their own, each holding a window's worth of
// its answer in the sidecar) leave the upstream connection's other calls
// their window: the upstream sends each stalled stream as much as its
// window allows without any given back, and a call from a third app
// connection is answered. Before, the second stalled stream found the
// connection's window spent, and the call hung to its deadline.
func TestH2StalledStreamsKeepDestination(t *testing.T) {
	for _, tc := range []struct {
		name    string
		grpc    bool
		stalled int
	}{
		{"two HTTP/2 GETs", false, 2},
		{"four gRPC server streams", true, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wrote := make(chan struct{}, tc.stalled)
			up, sn := startSniffedH2CUpstream(t, func(sn *h2Sniffer) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == "/ok" {
						_, _ = w.Write([]byte("fine"))
						return
					}
					// As much as the stream's window takes, before the
					// sidecar gives any back: one gRPC message of it.
					window, _, _ := sn.windows()
					body := make([]byte, window)
					if tc.grpc {
						w.Header().Set("Content-Type", "application/grpc")
						binary.BigEndian.PutUint32(body[1:5], window-5)
					}
					w.WriteHeader(http.StatusOK)
					if _, err := w.Write(body); err == nil && http.NewResponseController(w).Flush() == nil {
						wrote <- struct{}{}
					}
					<-r.Context().Done()
				}
			})
			sc := startSidecar(t, "", resolve(up, flowSvc)) // no policy timeout: long watches
			c := h2cClient(t)
			if err := getOK(c, sc.Addr, 10*time.Second); err != nil {
				t.Fatalf("before any stream stalled: %v", err)
			}
			<-sn.seen
			for range tc.stalled {
				_ = h2Stalled(t, sc.Addr, flowSvc, tc.grpc)
			}
			limit := time.After(10 * time.Second)
			for i := range tc.stalled {
				select {
				case <-wrote:
				case <-limit:
					stream, conn, _ := sn.windows()
					t.Errorf("the upstream sent %d of %d stalled streams their window (%d bytes) in 10 s: the connection's window (%d) is spent", i, tc.stalled, stream, conn)
				}
				if t.Failed() {
					break
				}
			}
			for i := range 3 {
				if err := getOK(c, sc.Addr, 5*time.Second); err != nil {
					t.Fatalf("call %d with %d streams stalled: %v", i+1, tc.stalled, err)
				}
			}
			if _, _, conns := sn.windows(); conns != 1 {
				t.Errorf("%d upstream connections, want 1: the stalled streams and the calls shared none", conns)
			}
		})
	}
}

package outbound_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/outbound"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestH2ResetThenRefusedDial: a bodiless request over h2c whose stream
// the upstream reset with PROTOCOL_ERROR is sent again by Go's transport
// on a new connection (golang/go#47635); when that dial is refused (the
// upstream died with the request) the try fails as the reset of its
// stream, not as a connect failure, which says the request never went:
// retryOn: [connect-failure] does not take it to the upstream again
// (before, it did, as 445fbce fixed for HTTP/1). A stream the upstream
// never processed stays a connect failure, retried: a GOAWAY below it, on
// an idle connection or on one where another call's stream was reset with
// PROTOCOL_ERROR a moment before (its connection lost to the try, its
// stream not reset).
func TestH2ResetThenRefusedDial(t *testing.T) {
	const policy = "timeout: 5s\nretries:\n  attempts: 2\n  perTryTimeout: 2s\n  retryOn: [connect-failure]\n"
	for _, tc := range []struct {
		name string
		// paths are the app's requests, sent at once but for "/warm"
		// (first, alone: it leaves an idle connection).
		paths []string
		// act is the upstream's once it has every stream of paths but
		// /warm: its listener is closed before, the connection after.
		act func(fr *http2.Framer, streams map[string]uint32) error
		// want is each request's answer (X-Minimesh-Error) and attempts
		// (access log), by path.
		want map[string]h2RefusedWant
	}{
		{
			name:  "reset, then the dial refused",
			paths: []string{"/charge"},
			act: func(fr *http2.Framer, s map[string]uint32) error {
				return fr.WriteRSTStream(s["/charge"], http2.ErrCodeProtocol)
			},
			want: map[string]h2RefusedWant{"/charge": {"reset", 1}},
		},
		{
			name:  "GOAWAY on an idle connection, then the dial refused",
			paths: []string{"/warm", "/charge"},
			act: func(fr *http2.Framer, s map[string]uint32) error {
				return fr.WriteGoAway(s["/warm"], http2.ErrCodeNo, nil)
			},
			want: map[string]h2RefusedWant{"/warm": {"", 1}, "/charge": {"connect-failure", 3}},
		},
		{
			name:  "another call's stream reset, a GOAWAY below this one's, then the dial refused",
			paths: []string{"/other", "/charge"},
			act: func(fr *http2.Framer, s map[string]uint32) error {
				if err := fr.WriteRSTStream(s["/other"], http2.ErrCodeProtocol); err != nil {
					return err
				}
				return fr.WriteGoAway(s["/charge"]-1, http2.ErrCodeNo, nil) // below it, whichever went first
			},
			want: map[string]h2RefusedWant{"/other": {"reset", 1}, "/charge": {"connect-failure", 3}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, heard := h2DyingUpstream(t, tc.paths, tc.act)
			const svc = "orders:8080"
			var al accessLog
			sc := startSidecar(t, policyDoc("orders", svc, policy), resolve(addr, svc), withAccessLog(&al))
			c := h2cClient(t)
			got := map[string]string{}
			var mu sync.Mutex
			send := func(path string) {
				req, err := http.NewRequest(http.MethodGet, "http://"+sc.Addr+path, nil)
				if err != nil {
					t.Error(err)
					return
				}
				req.Host = svc
				resp, err := c.Transport.RoundTrip(req)
				if err != nil {
					t.Errorf("%s: the app got no answer: %v", path, err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				got[path] = resp.Header.Get("X-Minimesh-Error")
				mu.Unlock()
			}
			var wg sync.WaitGroup
			for _, p := range tc.paths {
				if p == "/warm" {
					send(p)
					continue
				}
				wg.Go(func() { send(p) })
			}
			wg.Wait()
			entries := al.wait(t, len(tc.paths), 5*time.Second)
			for path, w := range tc.want {
				if got[path] != w.kind {
					t.Errorf("%s: X-Minimesh-Error %q, want %q", path, got[path], w.kind)
				}
				for _, e := range entries {
					if e.Path == path && (e.Attempts != w.attempts || e.Error != w.kind) {
						t.Errorf("%s: access log attempts %d, error %q; want %d, %q", path, e.Attempts, e.Error, w.attempts, w.kind)
					}
				}
				if n := heard(path); n != 1 {
					t.Errorf("%s: the upstream was sent it %d times, want once", path, n)
				}
			}
		})
	}
}

type h2RefusedWant struct {
	kind     string // X-Minimesh-Error, "" for the upstream's answer
	attempts int
}

// h2DyingUpstream is an h2c upstream on loopback that takes one
// connection: it answers /warm 200, waits for the streams of every other
// path, closes its listener (a dial after is refused) and calls act with
// the streams by path; the connection is the client's to close. heard
// counts the streams it was sent for a path.
func h2DyingUpstream(t *testing.T, paths []string, act func(*http2.Framer, map[string]uint32) error) (string, func(string) int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	heard := map[string]int{}
	wait := 0
	for _, p := range paths {
		if p != "/warm" {
			wait++
		}
	}
	done := make(chan struct{})
	conn := make(chan net.Conn, 1)
	t.Cleanup(func() {
		ln.Close()
		select {
		case c := <-conn:
			c.Close()
		default:
		}
		<-done
	})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		conn <- c
		defer c.Close()
		streams := map[string]uint32{}
		outbound.ServeH2c(c, func(fr *http2.Framer, f http2.Frame) error {
			h, ok := f.(*http2.MetaHeadersFrame)
			if !ok {
				return nil
			}
			path := h.PseudoValue("path")
			mu.Lock()
			heard[path]++
			mu.Unlock()
			streams[path] = h.StreamID
			if path == "/warm" {
				var b bytes.Buffer
				_ = hpack.NewEncoder(&b).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: b.Bytes(), EndHeaders: true, EndStream: true})
			}
			if wait--; wait > 0 {
				return nil
			}
			ln.Close()
			// The connection stays open, read until Go's transport
			// closes it (the test's end closes it too): what that
			// transport sees of each stream is act's frames, not a
			// connection lost.
			return act(fr, streams)
		})
	}()
	return ln.Addr().String(), func(path string) int {
		mu.Lock()
		defer mu.Unlock()
		return heard[path]
	}
}

package connlimit

import (
	"bufio"
	"io"
	"log"
	"net/http"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/leanhttp"
)

// TestSweepLeanHead drives the drain's sweep with an injected clock over
// the sidecar's lean server loop, whose first read of a request is lazy
// (ReadLazy). A head whose parts keep arriving is answered, however long
// it takes; one that stalls part way is closed after grace without a
// byte, as on net/http's server (TestSweepHeaderArriving), and not held
// until the header timeout (the loop reported such a head active from its
// first byte, and a stalled "GET " held the drain for 10 s).
func TestSweepLeanHead(t *testing.T) {
	const grace = time.Second
	for _, tc := range []struct {
		name string
		// keptAlive: a request is answered before the drain, so the next
		// one arrives on a connection in StateIdle rather than StateNew.
		keptAlive bool
		// parts are sent one before each look after the first; stall
		// leaves looks with nothing sent after them, else the head's
		// end follows.
		parts []string
		stall bool
	}{
		{name: "new G stalls", parts: []string{"G"}, stall: true},
		{name: "new GET stalls", parts: []string{"GET "}, stall: true},
		{name: "new request line stalls", parts: []string{"GET / HTTP/1.1\r\n"}, stall: true},
		{name: "kept-alive GE stalls", keptAlive: true, parts: []string{"GE"}, stall: true},
		{name: "kept-alive header line stalls", keptAlive: true, parts: []string{"GET / HTTP/1.1\r\n", "Host: x\r\n"}, stall: true},
		{name: "new head arrives", parts: []string{"GET / HTTP/1.1\r\n", "Host: x\r\n", "X-Part-1: y\r\n", "X-Part-2: y\r\n"}},
		{name: "kept-alive head arrives", keptAlive: true, parts: []string{"G", "ET / HTTP/1.1\r\n", "Host: x\r\n", "X-Part-2: y\r\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t, 0)
			srv := leanhttp.New(&http.Server{
				ConnState: l.ConnState,
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.WriteString(w, "ok "+r.Header.Get("X-Part-2"))
				}),
				// Far off: only the drain may close the connection.
				ReadHeaderTimeout: time.Minute,
				IdleTimeout:       time.Minute,
				ErrorLog:          log.New(io.Discard, "", 0),
			})
			go func() { _ = srv.ServeStd() }()
			go func() { _ = srv.Serve(l) }()
			t.Cleanup(func() { srv.Close() })
			c := &httpClientConn{dial(t, l.Addr().String()), nil}
			c.r = bufio.NewReader(c)
			want := http.StateNew
			if tc.keptAlive {
				c.get(t, "/")
				c.read(t)
				want = http.StateIdle
			}
			sc := waitState(t, l, c, want, 0)
			before := sc.state.Load()

			// send writes s and waits until the server has read it: its
			// read recorded bytes for the drain (the first of a request
			// is ReadLazy's).
			send := func(s string) {
				t.Helper()
				sc.drainRead.Store(false)
				if _, err := io.WriteString(c, s); err != nil {
					t.Fatal(err)
				}
				deadline := time.Now().Add(5 * time.Second)
				for !sc.drainRead.Load() {
					if time.Now().After(deadline) {
						t.Fatalf("no read of %q recorded for the drain", s)
					}
					time.Sleep(time.Millisecond)
				}
			}

			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			l.sweep(t0, grace) // the drain begins
			at := t0
			for _, part := range tc.parts {
				at = at.Add(grace)
				send(part)
				if left := l.sweep(at, grace); left != 1 || gone(t, l, c) {
					t.Fatalf("sweep %v into the drain closed a connection whose head was arriving", at.Sub(t0))
				}
			}
			if got := sc.state.Load(); got != before {
				t.Fatalf("state %v with the head part way, want %v unchanged: no request before its head is in", http.ConnState(got&7), want)
			}
			if tc.stall {
				l.sweep(at.Add(grace-time.Millisecond), grace)
				if gone(t, l, c) {
					t.Fatal("sweep closed the connection before its head had stalled for grace")
				}
				if left := l.sweep(at.Add(grace), grace); left != 0 || !gone(t, l, c) || !refusedConn(c) {
					t.Fatalf("a head stalled for grace was not cut: %d left", left)
				}
				return
			}
			if _, err := io.WriteString(c, "\r\n"); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(c.r, nil)
			if err != nil {
				t.Fatalf("no answer to the request whose head arrived during the drain: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "ok y" {
				t.Fatalf("answer %d %q, want 200 \"ok y\"", resp.StatusCode, body)
			}
		})
	}
}

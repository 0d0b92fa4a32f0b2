package connlimit

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestSweepHeaderArriving drives the drain's sweep with an injected clock
// over a real http.Server while a request's header lines arrive.
// net/http reports a request (StateActive) only once its header block is
// in, and reads what arrives into its own buffer, where pending cannot
// see it: the connection looks new (or idle) all along. A connection
// that read bytes since the sweep's last look is not idle; one whose
// header stops arriving for grace is (the drain's bound, as for a silent
// one).
func TestSweepHeaderArriving(t *testing.T) {
	const grace = time.Second
	for _, tc := range []struct {
		name string
		// keptAlive: a request is answered before the drain, so the next
		// one arrives on a connection in StateIdle rather than StateNew.
		keptAlive bool
		// lines are sent one before each look after the first; stall
		// leaves a look with nothing sent after them.
		lines []string
		stall bool
	}{
		{name: "new connection", lines: []string{"Host: x\r\n", "X-Part-1: y\r\n", "X-Part-2: y\r\n"}},
		{name: "kept-alive connection", keptAlive: true, lines: []string{"Host: x\r\n", "X-Part-1: y\r\n", "X-Part-2: y\r\n"}},
		{name: "header stalls for grace", lines: []string{"Host: x\r\n"}, stall: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t, 0)
			srv := &http.Server{
				ConnState: l.ConnState,
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.WriteString(w, "ok "+r.Header.Get("X-Part-2"))
				}),
			}
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
			// Read recorded bytes for the drain. (The flag is cleared
			// first, for the wait: a sweep sees it for this line only if
			// the server's Read set it.)
			send := func(s string) {
				t.Helper()
				sc.drainRead.Store(false)
				if _, err := io.WriteString(c, s); err != nil {
					t.Fatal(err)
				}
				deadline := time.Now().Add(5 * time.Second)
				for !sc.drainRead.Load() {
					if time.Now().After(deadline) {
						t.Fatalf("the server never read %q", s)
					}
					time.Sleep(time.Millisecond)
				}
			}

			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			l.sweep(t0, grace) // the drain begins
			send("GET / HTTP/1.1\r\n")
			at := t0
			for _, line := range tc.lines {
				at = at.Add(grace)
				send(line)
				if left := l.sweep(at, grace); left != 1 || gone(t, l, c) {
					t.Fatalf("sweep %v into the drain closed a connection whose header was still arriving", at.Sub(t0))
				}
			}
			if sc.state.Load() != before {
				t.Fatalf("state %v after the header lines, want %v unchanged: the premise (net/http reports no request before its header block) no longer holds", sc.State(), want)
			}
			if tc.stall {
				l.sweep(at.Add(grace-time.Millisecond), grace)
				if gone(t, l, c) {
					t.Fatal("sweep closed the connection before its header had stalled for grace")
				}
				if left := l.sweep(at.Add(grace), grace); left != 0 || !gone(t, l, c) || !refusedConn(c) {
					t.Fatalf("a header stalled for grace was not cut: %d left", left)
				}
				return
			}
			if _, err := io.WriteString(c, "\r\n"); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(c.r, nil)
			if err != nil {
				t.Fatalf("no answer to the request whose header arrived during the drain: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "ok y" {
				t.Fatalf("answer %d %q, want 200 \"ok y\"", resp.StatusCode, body)
			}
		})
	}
}

// TestReadOutsideDrain: before a drain, a read records nothing (the
// request path's cost is the one load of the listener's flag); during
// one, Read and ReadLazy (the lean loop's first read of a request) both
// record their bytes.
func TestReadOutsideDrain(t *testing.T) {
	for _, tc := range []struct {
		name string
		read func(*Conn) error
	}{
		{"Read", func(c *Conn) error { _, err := io.ReadFull(c, make([]byte, 1)); return err }},
		{"ReadLazy", func(c *Conn) error {
			_, n, err := c.ReadLazy(&countBufs{})
			if err == nil && n != 1 {
				err = fmt.Errorf("read %d bytes, want 1", n)
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t, 0)
			c := dial(t, l.Addr().String())
			nc, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			sc := nc.(*Conn)
			if _, err := io.WriteString(c, "a"); err != nil {
				t.Fatal(err)
			}
			if err := tc.read(sc); err != nil {
				t.Fatal(err)
			}
			if sc.drainRead.Load() {
				t.Fatal("a read before the drain was recorded for it")
			}
			l.sweep(time.Now(), time.Hour)
			if _, err := io.WriteString(c, "b"); err != nil {
				t.Fatal(err)
			}
			if err := tc.read(sc); err != nil {
				t.Fatal(err)
			}
			if !sc.drainRead.Load() {
				t.Fatal("a read during the drain was not recorded")
			}
		})
	}
}

package leanhttp

import (
	"bufio"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// readEvents is a listener whose connections report each Read: its start
// (-1) and, when it got bytes, how many. A connection is not a
// rawio.LazyReader, so the loop's lazy reads go through Read too.
type readEvents struct {
	net.Listener
	ev chan int
}

func (l readEvents) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &readEventConn{Conn: c, ev: l.ev}, nil
}

type readEventConn struct {
	net.Conn
	ev chan int
}

func (c *readEventConn) Read(p []byte) (int, error) {
	c.ev <- -1
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.ev <- n
	}
	return n, err
}

// TestActiveOnceHeadIn: the loop reports a request (StateActive) only
// once its head is complete, as net/http does: the drain tells a stalled
// partial head from a request by the state (connlimit), and cut such a
// head on the default server only at the 10 s header timeout, where
// net/http's was closed after the 1 s idle grace.
func TestActiveOnceHeadIn(t *testing.T) {
	const full = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, tc := range []struct {
		name      string
		keptAlive bool // a request is answered first: the next arrives on an idle connection
		part      string
	}{
		{name: "new G", part: "G"},
		{name: "new GET", part: "GET "},
		{name: "new request line", part: "GET / HTTP/1.1\r\n"},
		{name: "new header line", part: "GET / HTTP/1.1\r\nHost: x\r\n"},
		{name: "kept-alive G", keptAlive: true, part: "G"},
		{name: "kept-alive GET", keptAlive: true, part: "GET "},
		{name: "kept-alive request line", keptAlive: true, part: "GET / HTTP/1.1\r\n"},
		{name: "kept-alive header line", keptAlive: true, part: "GET / HTTP/1.1\r\nHost: x\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var states []string
			s := New(&http.Server{
				Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
				ReadHeaderTimeout: time.Minute,
				IdleTimeout:       time.Minute,
				ConnState: func(_ net.Conn, st http.ConnState) {
					mu.Lock()
					states = append(states, st.String())
					mu.Unlock()
				},
				ErrorLog: log.New(io.Discard, "", 0),
			})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ev := make(chan int, 64)
			go s.ServeStd()
			go s.Serve(readEvents{ln, ev})
			t.Cleanup(func() { s.Close() })
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			// sent writes p and waits until the server has read it and
			// waits in its next read: whatever it reports on the bytes,
			// it has reported. (At most a few events a test: the
			// channel's room holds them all.)
			sent := func(p string) {
				t.Helper()
				if _, err := io.WriteString(c, p); err != nil {
					t.Fatal(err)
				}
				got := 0
				for {
					select {
					case n := <-ev:
						if n > 0 {
							got += n
						} else if got >= len(p) {
							return
						}
					case <-time.After(10 * time.Second):
						t.Fatalf("the server read %d of the %d bytes of %q", got, len(p), p)
					}
				}
			}
			answered := func() {
				t.Helper()
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(b) != "ok" {
					t.Fatalf("answer %d %q, want 200 ok", resp.StatusCode, b)
				}
			}
			stateList := func() string {
				mu.Lock()
				defer mu.Unlock()
				return strings.Join(states, " ")
			}
			want := "new"
			if tc.keptAlive {
				sent(full)
				answered()
				want = "new active idle"
			}
			sent(tc.part)
			if got := stateList(); got != want {
				t.Fatalf("states with the head part read: %q, want %q (no request before its head is in)", got, want)
			}
			// The rest of the head: the loop reads no more until it has
			// answered and reported the connection idle.
			sent(full[len(tc.part):])
			answered()
			if got, want := stateList(), want+" active idle"; got != want {
				t.Fatalf("states after the answer: %q, want %q", got, want)
			}
		})
	}
}

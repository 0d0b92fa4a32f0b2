package leanhttp

import (
	"bufio"
	"io"
	"log"
	"net"
	"net/http"
	"testing"
	"time"
)

// slowClearConn widens one window of the watch: clearing the read
// deadline (the watch's, right after it claims the request) takes 150 ms
// to take effect, as a watch goroutine descheduled between the two
// would be. Every other deadline applies at once.
type slowClearConn struct{ net.Conn }

func (c slowClearConn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		time.Sleep(150 * time.Millisecond)
	}
	return c.Conn.SetReadDeadline(t)
}

type slowClearListener struct{ net.Listener }

func (l slowClearListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return slowClearConn{c}, nil
}

// TestWatchAbortNotLost: a request that ends while its watch is between
// claiming it and clearing the read deadline still gets its answer. The
// watch's clearing used to undo the end's abort, so that the watch's
// read waited for the client, the end waited for the read, and the
// response stayed in the loop's buffers for good (a stress of slow and
// quick requests hit it within seconds with two Ps).
func TestWatchAbortNotLost(t *testing.T) {
	std := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(60 * time.Millisecond) // past WatchAfter: watched
			io.WriteString(w, "ok")
		}),
		ReadHeaderTimeout: 2 * time.Second,
		IdleTimeout:       2 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	s := New(std)
	s.WatchAfter = 20 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.ServeStd()
	go s.Serve(slowClearListener{ln})
	defer s.Close()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a 60 ms request within 5 s: %v", err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "ok" {
		t.Fatalf("body %q, want ok", b)
	}
}

// TestWriteDeadlineEndsWithItsRequest: a write deadline a handler sets
// (http.ResponseController) ends with its request, as net/http clears it:
// the next request on the connection, after it has passed, is answered.
func TestWriteDeadlineEndsWithItsRequest(t *testing.T) {
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		}
		io.WriteString(w, "ok")
	}))
	for _, srv := range []struct{ name, addr string }{{"std", p.std}, {"lean", p.lean}} {
		c, err := net.Dial("tcp", srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var got []string
		for _, path := range []string{"/stream", "/next"} {
			io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: a\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				got = append(got, path+": "+err.Error())
				break
			}
			b, _ := io.ReadAll(resp.Body)
			got = append(got, path+": "+resp.Status+" "+string(b))
			time.Sleep(100 * time.Millisecond) // past the first request's write deadline
		}
		c.Close()
		if len(got) != 2 || got[1] != "/next: 200 OK ok" {
			t.Errorf("%s: %q, want the second request answered as the first", srv.name, got)
		}
	}
}

// TestHeaderTimeoutKeptOnHandOff: a head the loop waited for and then
// handed off (its last lines make it a request with a body) gets no
// second ReadHeaderTimeout from the standard server: it is refused as
// net/http alone refuses it, 300 ms after it began, not served at 500 ms.
func TestHeaderTimeoutKeptOnHandOff(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		io.WriteString(w, "served")
	})
	mk := func() *http.Server {
		return &http.Server{Handler: h, ReadHeaderTimeout: 300 * time.Millisecond, IdleTimeout: time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	}
	std := mk()
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go std.Serve(sln)
	defer std.Close()
	lean := New(mk())
	lln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go lean.ServeStd()
	go lean.Serve(lln)
	defer lean.Close()
	for _, srv := range []struct{ name, addr string }{{"std", sln.Addr().String()}, {"lean", lln.Addr().String()}} {
		c, err := net.Dial("tcp", srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n")
		time.Sleep(250 * time.Millisecond)
		io.WriteString(c, "Content-Length: 1\r\n")
		time.Sleep(250 * time.Millisecond) // 500 ms into the head
		io.WriteString(c, "\r\nx")
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		c.Close()
		if len(got) > 0 {
			t.Errorf("%s: a head finished 500 ms after it began, with ReadHeaderTimeout 300 ms, was answered: %q", srv.name, got)
		}
	}
}

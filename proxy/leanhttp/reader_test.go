package leanhttp

import (
	"bufio"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/rawio"
)

// lazyConn is a connection with a lazy read of its own: each wait for
// bytes first does as a raw read that finds nothing does (takes a
// buffer and gives it back), then reports which buffers its server
// connection holds, as it would while parked. ReadLazy runs on the
// connection's goroutine, so the look races nothing.
type lazyConn struct {
	net.Conn
	s     *Server
	waits chan string
}

func (c *lazyConn) ReadLazy(bufs rawio.Buffers) ([]byte, int, error) {
	bufs.Put(bufs.Get())
	c.s.mu.Lock()
	var held string
	for lc := range c.s.conns {
		if lc.rwc == c {
			held = fmt.Sprintf("read buffer %v, writer %v", lc.br.buf != nil, lc.bw != nil)
		}
	}
	c.s.mu.Unlock()
	c.waits <- held
	return rawio.ReadLazy(c.Conn, bufs)
}

type lazyListener struct {
	net.Listener
	s     *Server
	waits chan string
}

func (l *lazyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &lazyConn{Conn: c, s: l.s, waits: l.waits}, nil
}

// TestIdleHoldsNoBuffers: a connection waits for each request, the first
// and those after, with neither its read buffer nor its writer; both come
// back as requests do, bodies and all.
func TestIdleHoldsNoBuffers(t *testing.T) {
	s := New(&http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %s %q", r.Method, r.URL.Path, b)
		}),
		ErrorLog: log.New(io.Discard, "", 0),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	waits := make(chan string, 16)
	go s.ServeStd()
	go s.Serve(&lazyListener{Listener: ln, s: s, waits: waits})
	defer s.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	const idle = "read buffer false, writer false"
	// A connection that waits holding its read buffer reads without
	// ReadLazy: no report comes.
	wait := func(what string) string {
		select {
		case held := <-waits:
			return held
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no lazy read in 10 s (a wait holding its read buffer?)", what)
			return ""
		}
	}
	for i, x := range []struct{ req, want string }{
		{"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", `GET /a ""`},
		{"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", `POST /b "hello"`},
		{"GET /c HTTP/1.1\r\nHost: a\r\n\r\n", `GET /c ""`},
		{"PUT /d HTTP/1.1\r\nHost: a\r\nContent-Length: 6000\r\n\r\n" + strings.Repeat("x", 6000), `PUT /d "` + strings.Repeat("x", 6000) + `"`},
	} {
		if held := wait(fmt.Sprint("request ", i)); held != idle {
			t.Fatalf("waiting for request %d: %s, want %s", i, held, idle)
		}
		if _, err := io.WriteString(c, x.req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != x.want {
			t.Fatalf("request %d: %.60q, want %.60q", i, b, x.want)
		}
	}
	if held := wait("after the last request"); held != idle {
		t.Fatalf("waiting after the last request: %s, want %s", held, idle)
	}
}

// TestWriteAfterHandler: a goroutine a handler left behind that writes
// or flushes once the handler returned gets an error, not a crash (the
// connection, idle then, holds no writer), and nothing of it reaches the
// connection's next answer.
func TestWriteAfterHandler(t *testing.T) {
	kept := make(chan http.ResponseWriter, 1)
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/keep" {
			_ = r.Context().Done() // the response is then the request's own, not lent on
			kept <- w
		}
		io.WriteString(w, r.URL.Path)
	}))
	c, err := net.Dial("tcp", p.lean)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if got := roundTrip(t, c, br, "/keep"); got != "/keep" {
		t.Fatalf("first answer %q", got)
	}
	// The answer read: the handler returned (its finish wrote the answer
	// before this read it).
	w := <-kept
	var results []string
	func() {
		defer func() {
			if r := recover(); r != nil {
				results = append(results, fmt.Sprint("panic: ", r))
			}
		}()
		_, werr := w.Write([]byte("late"))
		ferr := w.(interface{ FlushError() error }).FlushError()
		w.WriteHeader(http.StatusEarlyHints)
		results = append(results, fmt.Sprint(werr), fmt.Sprint(ferr))
	}()
	want := errAfterHandler.Error()
	if strings.Join(results, "; ") != want+"; "+want {
		t.Fatalf("a write and a flush after the handler: %q, want %q twice", results, want)
	}
	if got := roundTrip(t, c, br, "/next"); got != "/next" {
		t.Fatalf("next answer %q, want /next alone", got)
	}
}

package leanhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// startLean serves h on the lean loop alone, watching requests after
// watchAfter, and returns its address.
func startLean(t *testing.T, h http.Handler, watchAfter time.Duration) string {
	t.Helper()
	s := New(newServer(h, io.Discard))
	s.WatchAfter = watchAfter
	return serveOn(t, s)
}

// dialLean connects to addr for up to 10 s of exchanges, closed with t.
func dialLean(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// bodyEcho answers with the body it read, the read's error, and whether
// the lean loop served it.
var bodyEcho = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	_, lean := w.(*response)
	fmt.Fprintf(w, "%s %q %v lean=%v", r.Method, b, err, lean)
})

// sendPieces writes each piece of raw in turn on c, and reads one
// response.
func sendPieces(t *testing.T, c net.Conn, br *bufio.Reader, pieces ...string) string {
	t.Helper()
	for i, p := range pieces {
		if i > 0 {
			time.Sleep(20 * time.Millisecond) // so that the loop sees the head, or part of the body, first
		}
		if _, err := io.WriteString(c, p); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBodyInPieces: a body that comes after its head, or in pieces, is
// read whole by the handler from the lean loop, and the connection's
// next request is served by the loop too, of every method that may have
// a body.
func TestBodyInPieces(t *testing.T) {
	addr := startLean(t, bodyEcho, 0)
	c, br := dialLean(t, addr)
	big := strings.Repeat("z", MaxBody)
	for _, tc := range []struct {
		pieces []string
		want   string
	}{
		{[]string{"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"}, `POST "hello" <nil> lean=true`},
		{[]string{"PUT /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", "hello"}, `PUT "hello" <nil> lean=true`},
		{[]string{"PATCH /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe", "l", "lo"}, `PATCH "hello" <nil> lean=true`},
		{[]string{"GET / HTTP/1.1\r\nHost: a\r\n\r\n"}, `GET "" <nil> lean=true`},
		{[]string{"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 16384\r\n\r\n" + big[:1000], big[1000:]}, `POST "` + big + `" <nil> lean=true`},
		{[]string{"DELETE /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"}, `DELETE "{}" <nil> lean=true`},
	} {
		if got := sendPieces(t, c, br, tc.pieces...); got != tc.want {
			t.Errorf("%q: answered %.80q, want %.80q", tc.pieces[0], got, tc.want)
		}
	}
}

// TestBodyNotWatched: a request's connection is not watched for its
// client's departure until its body is read (a watch's read would take
// the body's bytes, out of order): a handler that leaves the body unread
// for longer than WatchAfter while the client sends it slowly still
// finds it whole, and the next request on the connection is intact. Once
// the body is read, the watch cancels the request when the client goes.
func TestBodyNotWatched(t *testing.T) {
	gone := make(chan error, 1)
	addr := startLean(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" {
			_, _ = io.ReadAll(r.Body)
			select {
			case <-r.Context().Done():
				gone <- r.Context().Err()
			case <-time.After(5 * time.Second):
				gone <- errors.New("not cancelled")
			}
			return
		}
		time.Sleep(60 * time.Millisecond) // past WatchAfter, with the body coming
		bodyEcho(w, r)
	}), 10*time.Millisecond)
	c, br := dialLean(t, addr)
	got := sendPieces(t, c, br, "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nab", "cd", "ef")
	if want := `POST "abcdef" <nil> lean=true`; got != want {
		t.Errorf("answered %q, want %q", got, want)
	}
	if got, want := sendPieces(t, c, br, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"), `GET "" <nil> lean=true`; got != want {
		t.Errorf("the next request answered %q, want %q", got, want)
	}
	if _, err := io.WriteString(c, "POST /wait HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond) // the body read
	c.Close()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Errorf("client gone after its body: the request's context ended with %v, want it cancelled", err)
	}
}

// TestBodyLeftUnread: what a handler leaves of a body is read and
// dropped, before the response unless the handler asked for full
// duplex, after it otherwise, and the next request is served from the
// right byte; a body read after the handler returned fails
// (http.ErrBodyReadAfterClose), never reading the next request.
func TestBodyLeftUnread(t *testing.T) {
	late := make(chan error, 1)
	addr := startLean(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/duplex":
			_ = http.NewResponseController(w).EnableFullDuplex()
			io.WriteString(w, "duplex")
		case "/late":
			body := r.Body
			go func() {
				time.Sleep(50 * time.Millisecond) // the handler has returned
				_, err := body.Read(make([]byte, 8))
				late <- err
			}()
			io.WriteString(w, "late")
		default:
			bodyEcho(w, r)
		}
	}), 0)
	c, br := dialLean(t, addr)
	for _, tc := range []struct {
		pieces []string
		want   string
	}{
		{[]string{"POST /duplex HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab", "cd"}, "duplex"},
		{[]string{"GET / HTTP/1.1\r\nHost: a\r\n\r\n"}, `GET "" <nil> lean=true`},
		{[]string{"POST /late HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nwxyz"}, "late"},
		{[]string{"GET / HTTP/1.1\r\nHost: a\r\n\r\n"}, `GET "" <nil> lean=true`},
	} {
		if got := sendPieces(t, c, br, tc.pieces...); got != tc.want {
			t.Errorf("%q: answered %q, want %q", tc.pieces[0], got, tc.want)
		}
	}
	if err := <-late; !errors.Is(err, http.ErrBodyReadAfterClose) {
		t.Errorf("a body read after its handler returned: %v, want %v", err, http.ErrBodyReadAfterClose)
	}
}

// TestStaleBodyReader: a reader of a body its handler left behind finds
// the body closed, also once the next request on the connection has a
// body of its own, which its handler gets whole.
func TestStaleBodyReader(t *testing.T) {
	first := make(chan io.Reader, 1)
	stale := make(chan string, 1)
	addr := startLean(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/1" {
			first <- r.Body // read later, by whom the test says
			io.WriteString(w, "one")
			return
		}
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%q %v", b, err)
	}), 0)
	c, br := dialLean(t, addr)
	if got := sendPieces(t, c, br, "POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"); got != "one" {
		t.Fatalf("first answer %q", got)
	}
	body := <-first
	// The second request's head is in, its body not yet: a stale read
	// now would wait for, and take, its bytes.
	if _, err := io.WriteString(c, "POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	go func() {
		b, err := io.ReadAll(body)
		stale <- fmt.Sprintf("%q %v", b, err)
	}()
	if got, want := <-stale, `"" `+http.ErrBodyReadAfterClose.Error(); got != want {
		t.Errorf("the first request's body, read after its handler returned: %s, want %s", got, want)
	}
	if got, want := sendPieces(t, c, br, "SECRET"), `"SECRET" <nil>`; got != want {
		t.Errorf("the second request's handler got %s, want %s", got, want)
	}
}

// TestBodyReadOnPanic: a handler that panics while a goroutine of its
// own waits on its body: the connection closes, the read ends with an
// error, and the connection's reader goes back to the pool only after
// it (-race finds a read of a reader in the pool).
func TestBodyReadOnPanic(t *testing.T) {
	read := make(chan error, 1)
	addr := startLean(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started := make(chan struct{})
		go func() {
			close(started)
			_, err := io.ReadAll(r.Body)
			read <- err
		}()
		<-started
		time.Sleep(20 * time.Millisecond) // the read waits for the rest
		panic(http.ErrAbortHandler)
	}), 0)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nab"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-read:
		if err == nil {
			t.Error("the body's read ended without an error: 2 of 100 bytes came")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the body's read still waits 5 s after its handler panicked")
	}
	// The pool's reader serves other connections.
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c2, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if _, err := http.ReadResponse(bufio.NewReader(c2), nil); err == nil {
		t.Error("a panicking handler answered") // (it panics for every request)
	}
}

// TestClosingConnectionDoesNotWaitForBody: a connection that closes after
// its response (HTTP/1.0, Connection: close) does not wait for the rest
// of a body its handler left (in full duplex): it half-closes at once,
// and the client that waits for the end gets it, as from net/http.
func TestClosingConnectionDoesNotWaitForBody(t *testing.T) {
	std := newServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		io.WriteString(w, "early")
	}), io.Discard)
	std.ReadHeaderTimeout = 30 * time.Second // what the drop of a body would wait
	addr := serveOn(t, New(std))
	for _, req := range []string{
		"POST / HTTP/1.0\r\nContent-Length: 10\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 10\r\n\r\nabc",
	} {
		c, br := dialLean(t, addr)
		start := time.Now()
		io.WriteString(c, req)
		got, err := io.ReadAll(br)
		if err != nil {
			t.Fatalf("%q: %v after %q", req, err, got)
		}
		if d := time.Since(start); d > 5*time.Second || !strings.HasSuffix(string(got), "early") {
			t.Errorf("%q: the answer %q ended after %v, want it whole at once (the body's drop waits 30 s)", req, got, d)
		}
	}
}

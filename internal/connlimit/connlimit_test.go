package connlimit

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

func listen(t *testing.T, max int) *Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(ln.(*net.TCPListener), max)
	t.Cleanup(func() { l.Close(); l.CloseAll() })
	return l
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refusedConn reports whether the server ended c at once: a read gets
// a reset or EOF well before the deadline.
func refusedConn(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func TestCap(t *testing.T) {
	l := listen(t, 3)
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	for range 3 {
		clients = append(clients, dial(t, l.Addr().String()))
	}
	var held []net.Conn
	for range 3 {
		select {
		case c := <-accepted:
			held = append(held, c)
		case <-time.After(5 * time.Second):
			t.Fatal("connection within the cap not accepted")
		}
	}
	// Past the cap: accepted and reset at once, not left in the backlog.
	for range 2 {
		c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		// The reset may come before connect returns.
		if err == nil && !refusedConn(c) {
			t.Fatal("a connection past the cap was not closed at once")
		}
	}
	if l.Open() != 3 || l.Refused() != 2 {
		t.Fatalf("Open %d Refused %d, want 3 and 2", l.Open(), l.Refused())
	}
	select {
	case <-accepted:
		t.Fatal("a connection past the cap reached the server")
	default:
	}
	// A closed connection (twice: counted once) makes room for a new one.
	held[0].Close()
	held[0].Close()
	if l.Open() != 2 {
		t.Fatalf("Open %d after a close, want 2", l.Open())
	}
	dial(t, l.Addr().String())
	select {
	case c := <-accepted:
		held = append(held, c)
	case <-time.After(5 * time.Second):
		t.Fatal("no room made by a closed connection")
	}
	if l.Open() != 3 || l.Refused() != 2 {
		t.Fatalf("Open %d Refused %d, want 3 and 2", l.Open(), l.Refused())
	}
	// Clients that close their end: the server's Close releases the place.
	for _, c := range clients {
		c.Close()
	}
	for _, c := range held[1:] {
		c.Close()
	}
	if l.Open() != 0 {
		t.Fatalf("Open %d with every connection closed, want 0", l.Open())
	}
}

// TestCloseWrite: the embedded *net.TCPConn keeps CloseWrite, so a
// tunnel can still half-close through the wrapper.
func TestCloseWrite(t *testing.T) {
	l := listen(t, 1)
	c := dial(t, l.Addr().String())
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cw, ok := sc.(interface{ CloseWrite() error })
	if !ok {
		t.Fatal("*Conn lacks CloseWrite")
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client read after CloseWrite: %v, want EOF", err)
	}
	if _, err := c.Write([]byte("still open")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 10)
	if _, err := io.ReadFull(sc, b); err != nil || string(b) != "still open" {
		t.Fatalf("server read after its CloseWrite: %q %v", b, err)
	}
}

// httpClientConn is a raw keep-alive HTTP/1.1 client connection.
type httpClientConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *httpClientConn) get(t *testing.T, path string) {
	t.Helper()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
}

func (c *httpClientConn) read(t *testing.T) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// byClient maps each client's local address to its server-side
// connection.
func (l *Listener) byClient() map[string]*Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := map[string]*Conn{}
	for c := range l.conns {
		m[c.RemoteAddr().String()] = c
	}
	return m
}

// waitState waits until the server reports state st for client's
// connection, after more than after transitions.
func waitState(t *testing.T, l *Listener, client net.Conn, st http.ConnState, after uint64) *Conn {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c := l.byClient()[client.LocalAddr().String()]; c != nil {
			if v := c.state.Load(); http.ConnState(v&7) == st && v>>3 > after {
				return c
			}
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("connection of %s never reached %v", client.LocalAddr(), st)
	return nil
}

func gone(t *testing.T, l *Listener, client net.Conn) bool {
	t.Helper()
	return l.byClient()[client.LocalAddr().String()] == nil
}

// TestSweep drives the drain's sweep with an injected clock over a real
// http.Server: only connections idle (or new) for the whole grace since
// the drain began are closed; one that carried a request meanwhile, one
// with a request in flight and a hijacked one are not.
func TestSweep(t *testing.T) {
	l := listen(t, 0)
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	srv := &http.Server{
		ConnState: l.ConnState,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/slow":
				entered <- struct{}{}
				<-release
			case "/hijack":
				c, _, _ := w.(http.Hijacker).Hijack()
				t.Cleanup(func() { c.Close() })
				return
			}
			_, _ = io.WriteString(w, "ok")
		}),
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	addr := l.Addr().String()
	conn := func() *httpClientConn {
		c := dial(t, addr)
		return &httpClientConn{c, bufio.NewReader(c)}
	}

	idle := conn()
	idle.get(t, "/")
	idle.read(t)
	waitState(t, l, idle, http.StateIdle, 0)
	fresh := conn()
	waitState(t, l, fresh, http.StateNew, 0)
	active := conn()
	active.get(t, "/slow")
	<-entered
	waitState(t, l, active, http.StateActive, 0)
	hijacked := conn()
	hijacked.get(t, "/hijack")
	waitState(t, l, hijacked, http.StateHijacked, 0)

	const grace = time.Second
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if left := l.sweep(t0, grace); left != 3 {
		t.Fatalf("sweep at the start: %d left, want 3 (the hijacked one is not counted)", left)
	}
	if left := l.sweep(t0.Add(grace-time.Millisecond), grace); left != 3 {
		t.Fatalf("sweep before the grace ran out: %d left, want 3", left)
	}
	// The idle connection carries a request: it is idle again, but only
	// since now.
	before := l.byClient()[idle.LocalAddr().String()].state.Load() >> 3
	idle.get(t, "/")
	idle.read(t)
	waitState(t, l, idle, http.StateIdle, before)
	if left := l.sweep(t0.Add(grace), grace); left != 2 {
		t.Fatalf("sweep at grace: %d left, want 2 (the new connection closed)", left)
	}
	if !gone(t, l, fresh) || !refusedConn(fresh) {
		t.Error("the connection that never sent a request was not closed after grace")
	}
	if gone(t, l, idle) || gone(t, l, active) || gone(t, l, hijacked) {
		t.Fatal("sweep closed a connection that was not idle for grace")
	}
	if left := l.sweep(t0.Add(2*grace), grace); left != 1 {
		t.Fatalf("sweep at 2×grace: %d left, want 1 (the request in flight)", left)
	}
	if !gone(t, l, idle) {
		t.Error("the keep-alive connection idle for grace was not closed")
	}
	// The request in flight is answered, whatever the sweeps.
	close(release)
	active.read(t)
	waitState(t, l, active, http.StateIdle, 0)
	l.sweep(t0.Add(3*grace), grace)
	if left := l.sweep(t0.Add(4*grace), grace); left != 0 {
		t.Fatalf("sweep after the last answer: %d left, want 0", left)
	}
	if gone(t, l, hijacked) {
		t.Error("sweep closed a hijacked connection: its owner drains it")
	}
	if l.Open() != 1 {
		t.Errorf("Open %d, want 1 (the hijacked connection)", l.Open())
	}
}

// TestSweepPending: a connection that looks idle but has bytes waiting to
// be read (a request the server's goroutine has not got to) is not closed.
func TestSweepPending(t *testing.T) {
	l := listen(t, 0)
	c := dial(t, l.Addr().String())
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !pending(sc.(*Conn).TCPConn) {
		if time.Now().After(deadline) {
			t.Fatal("pending never saw the bytes")
		}
		time.Sleep(time.Millisecond)
	}
	t0 := time.Now()
	l.sweep(t0, time.Second)
	if left := l.sweep(t0.Add(time.Hour), time.Second); left != 1 {
		t.Fatalf("a connection with a request waiting was closed")
	}
	// pending peeks: the bytes are still there for the server.
	b := make([]byte, 16)
	if _, err := io.ReadFull(sc, b); err != nil || string(b) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("after pending, the server reads %q %v", b, err)
	}
	// The read restarts the idle clock (TestSweepHeaderArriving).
	if left := l.sweep(t0.Add(2*time.Hour), time.Second); left != 1 {
		t.Fatalf("a connection read from since the last look was closed")
	}
	if left := l.sweep(t0.Add(2*time.Hour+time.Second), time.Second); left != 0 {
		t.Fatalf("an idle connection with nothing waiting was not closed")
	}
}

// TestCloseTwice: when two goroutines close a connection at once (the
// drain's sweep, and the server's goroutine whose read that close ended),
// neither Close returns before the place is released: the sweep counts
// what is left right after its closes. Each round races two closes.
func TestCloseTwice(t *testing.T) {
	l := listen(t, 0)
	for range 300 {
		c := dial(t, l.Addr().String())
		sc, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		start := make(chan struct{})
		held := make(chan bool, 2)
		for range 2 {
			go func() {
				<-start
				sc.Close()
				l.mu.Lock()
				_, ok := l.conns[sc.(*Conn)]
				l.mu.Unlock()
				held <- ok || l.Open() != 0
			}()
		}
		close(start)
		if first, second := <-held, <-held; first || second {
			t.Fatal("Close returned while the connection still held its place")
		}
		c.Close()
	}
}

// TestDrainEnds: Drain returns as soon as the last connection closes, and
// with the number left when its context ends.
func TestDrainEnds(t *testing.T) {
	l := listen(t, 0)
	dial(t, l.Addr().String())
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc.(*Conn).setState(http.StateActive) // a request in flight: never idle

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if left := l.Drain(ctx, time.Millisecond); left != 1 {
		t.Fatalf("Drain at its deadline: %d left, want 1", left)
	}

	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- l.Drain(ctx, time.Hour) }()
	sc.Close()
	select {
	case left := <-done:
		if left != 0 {
			t.Fatalf("Drain: %d left, want 0", left)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Drain did not return once the last connection closed")
	}
}

func TestConnStateOtherConn(t *testing.T) {
	l := listen(t, 0)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	l.ConnState(a, http.StateActive) // not ours: ignored, no panic
}

// BenchmarkConnState is the per-request cost of the tracking: the server
// calls the hook twice per request (active, then idle).
func BenchmarkConnState(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	l := New(ln.(*net.TCPListener), 0)
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	sc, err := l.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer sc.Close()
	b.ReportAllocs()
	for b.Loop() {
		l.ConnState(sc, http.StateActive)
		l.ConnState(sc, http.StateIdle)
	}
}

// TestReadLazy: an accepted connection reads lazily, raw or not: the
// buffer comes from get with the bytes, and goes back to put at the end.
func TestReadLazy(t *testing.T) {
	for _, raw := range []bool{true, false} {
		l := listen(t, 0)
		c := dial(t, l.Addr().String())
		nc, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		ac := nc.(*Conn)
		if !raw {
			ac.io = nil
		}
		var bs countBufs
		if _, err := c.Write([]byte("lazy")); err != nil {
			t.Fatal(err)
		}
		b, n, err := ac.ReadLazy(&bs)
		if err != nil || string(b[:n]) != "lazy" {
			t.Fatalf("raw %v: ReadLazy = %q, %v", raw, b[:n], err)
		}
		c.Close()
		if b, n, err := ac.ReadLazy(&bs); b != nil || n != 0 || err != io.EOF {
			t.Fatalf("raw %v: at the peer's close ReadLazy = %v, %d, %v; want nil, 0, EOF", raw, b, n, err)
		}
		if bs.got-bs.put != 1 {
			t.Fatalf("raw %v: %d buffers got, %d given back; want all but the one with the bytes back", raw, bs.got, bs.put)
		}
		ac.Close()
	}
}

// countBufs lends ReadLazy buffers and counts them.
type countBufs struct{ got, put int }

func (b *countBufs) Get() []byte { b.got++; return make([]byte, 16) }
func (b *countBufs) Put([]byte)  { b.put++ }

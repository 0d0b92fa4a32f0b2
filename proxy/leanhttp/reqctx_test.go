package leanhttp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"
)

// seen is what a handler saw of one request: its context, Request,
// ResponseWriter, the context RequestContext was given back (prev) and
// its context's Err while it ran.
type seen struct {
	ctx  context.Context
	req  *http.Request
	w    http.ResponseWriter
	prev context.Context
	err  error
}

// lendServer serves one connection with a handler that records what it
// saw, and calls wait's function (if any) for the request's path.
func lendServer(t *testing.T, wait map[string]func(*http.Request)) (net.Conn, chan seen) {
	t.Helper()
	got := make(chan seen, 8)
	var prev context.Context // what the hook was given: the handler runs after it, on its goroutine
	s := New(newServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := wait[r.URL.Path]; f != nil {
			f(r)
		}
		got <- seen{r.Context(), r, w, prev, r.Context().Err()}
	}), io.Discard))
	// As outbound's: prev itself again when given one.
	s.RequestContext = func(ctx, p context.Context) context.Context {
		prev = p
		if p != nil {
			return p
		}
		return &hookCtx{Context: ctx}
	}
	addr := serveOn(t, s)
	c := dialOn(t, addr)
	return c, got
}

// hookCtx is a hook's per-request state.
type hookCtx struct{ context.Context }

// roundTrip sends GET path on c and returns the answer's body.
func roundTrip(t *testing.T, c net.Conn, br *bufio.Reader, path string) string {
	t.Helper()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return string(b)
}

// TestRequestContextLent: requests of one connection whose context
// nothing waits on get the same context, Request and ResponseWriter,
// lent again (none of the three allocated again), and the hook gets its
// own context back; each request's context is live while it is served
// and cancelled once its response is written, as net/http's is.
func TestRequestContextLent(t *testing.T) {
	c, got := lendServer(t, nil)
	br := bufio.NewReader(c)
	var first seen
	for i := range 4 {
		roundTrip(t, c, br, "/")
		s := <-got
		if s.err != nil {
			t.Fatalf("request %d: context's Err %v while served", i, s.err)
		}
		if err := s.ctx.Err(); !errors.Is(err, context.Canceled) {
			t.Fatalf("request %d: context's Err after the response %v, want Canceled", i, err)
		}
		if i == 0 {
			first = s
			continue
		}
		if s.ctx != first.ctx || s.req != first.req || s.w != first.w {
			t.Errorf("request %d: context, Request, ResponseWriter made again, want the first's lent", i)
		}
		if s.prev != first.ctx {
			t.Errorf("request %d: the hook was given %v, want its context for the first request", i, s.prev)
		}
	}
}

// TestRequestContextWaited: a request whose context's Done was asked for
// keeps its context: cancelled as its response ends (what waited on it
// returns, a child context ends with it), and left cancelled, while the
// next request gets a new context, Request and ResponseWriter, and the
// hook no context to reuse.
func TestRequestContextWaited(t *testing.T) {
	ended := make(chan struct{})
	var child context.Context
	var cancelChild context.CancelFunc
	defer func() { cancelChild() }()
	c, got := lendServer(t, map[string]func(*http.Request){
		"/wait": func(r *http.Request) {
			done := r.Context().Done()
			var cancel context.CancelFunc
			child, cancel = context.WithCancel(r.Context())
			cancelChild = cancel
			go func() { <-done; close(ended) }()
		},
	})
	br := bufio.NewReader(c)
	roundTrip(t, c, br, "/")
	lent := <-got
	roundTrip(t, c, br, "/wait")
	waited := <-got
	if waited.ctx != lent.ctx {
		t.Fatal("the second request did not get the first's context: nothing to test")
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("what waited on the request's Done still waits after its response")
	}
	if err := child.Err(); !errors.Is(err, context.Canceled) {
		t.Errorf("a child of the request's context: Err %v after the response, want Canceled", err)
	}
	roundTrip(t, c, br, "/")
	next := <-got
	if next.ctx == waited.ctx || next.req == waited.req || next.w == waited.w {
		t.Error("the request after a waited one got its context, Request or ResponseWriter again")
	}
	if next.prev != nil {
		t.Error("the hook was given a waited context back")
	}
	if err := waited.ctx.Err(); !errors.Is(err, context.Canceled) {
		t.Errorf("the waited context's Err %v once the next request is served, want Canceled still", err)
	}
	if next.err != nil {
		t.Errorf("the next request's context: Err %v while served", next.err)
	}
}

// TestRequestContextErrOnClientGone: a handler that never asks for Done,
// only polls Err, sees its request cancelled when the client goes away.
func TestRequestContextErrOnClientGone(t *testing.T) {
	res := make(chan error, 1)
	c, _ := lendServer(t, map[string]func(*http.Request){
		"/poll": func(r *http.Request) {
			deadline := time.Now().Add(5 * time.Second)
			for r.Context().Err() == nil && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			res <- r.Context().Err()
		},
	})
	if _, err := io.WriteString(c, "GET /poll HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("Err after the client left: %v, want Canceled", err)
	}
}

// TestRequestContextCancellableConn: a connection whose own context can
// end (ConnContext with a cancel) lends nothing: each request gets a
// context of its own, which ends with the connection's.
func TestRequestContextCancellableConn(t *testing.T) {
	connCtx, cancelConn := context.WithCancel(context.Background())
	defer cancelConn()
	got := make(chan context.Context, 4)
	std := newServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Context()
	}), io.Discard)
	std.ConnContext = func(context.Context, net.Conn) context.Context { return connCtx }
	s := New(std)
	addr := serveOn(t, s)
	c := dialOn(t, addr)
	br := bufio.NewReader(c)
	roundTrip(t, c, br, "/")
	roundTrip(t, c, br, "/")
	a, b := <-got, <-got
	if a == b {
		t.Error("a connection with a cancellable context lent its request context")
	}
	if _, ok := a.(*reqCtx); ok {
		t.Error("a connection with a cancellable context got a lent context type")
	}
}

// TestReqCtxDoneRace: Done asked while the request is cancelled, from
// many goroutines: every channel handed out closes, and Err is Canceled
// once any has.
func TestReqCtxDoneRace(t *testing.T) {
	for range 200 {
		c := &reqCtx{parent: context.Background()}
		c.cancelFn = c.cancel
		var wg sync.WaitGroup
		chans := make(chan (<-chan struct{}), 8)
		for range 4 {
			wg.Go(func() { chans <- c.Done() })
		}
		wg.Go(c.cancelFn)
		wg.Wait()
		close(chans)
		for ch := range chans {
			select {
			case <-ch:
			case <-time.After(5 * time.Second):
				t.Fatal("a Done channel handed out around the cancel never closed")
			}
		}
		if !errors.Is(c.Err(), context.Canceled) {
			t.Fatalf("Err %v after cancel", c.Err())
		}
	}
}

// TestRequestContextAcrossConns: what one connection's request gave back
// serves the next request of another connection, with that connection's
// context (its ConnContext's values) as the parent, not the first's.
func TestRequestContextAcrossConns(t *testing.T) {
	type connKey struct{}
	type saw struct {
		ctx  context.Context
		conn any
	}
	got := make(chan saw, 2)
	std := newServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- saw{r.Context(), r.Context().Value(connKey{})}
	}), io.Discard)
	var n int
	var mu sync.Mutex
	std.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		mu.Lock()
		defer mu.Unlock()
		n++
		return context.WithValue(ctx, connKey{}, n)
	}
	s := New(std)
	addr := serveOn(t, s)
	var seen []saw
	for range 2 {
		c := dialOn(t, addr)
		roundTrip(t, c, bufio.NewReader(c), "/")
		seen = append(seen, <-got)
		// The client has the answer a moment before the server's goroutine
		// gives the bundle back (on a busy machine, long enough for the
		// next connection's request to start first): wait for it.
		lentBack(t, s)
	}
	if seen[0].ctx != seen[1].ctx {
		t.Fatal("the second connection's request did not get what the first's gave back: nothing to test")
	}
	if seen[0].conn != 1 || seen[1].conn != 2 {
		t.Errorf("the requests' contexts carry connections %v and %v, want 1 and 2", seen[0].conn, seen[1].conn)
	}
}

// TestRequestContextDoneAfterEnd: a context whose Done is first asked
// for after its request ended (against the package's contract, which
// net/http allows) reports the end, and is never lent again: the next
// request's context is new and live.
func TestRequestContextDoneAfterEnd(t *testing.T) {
	live := make(chan bool, 1)
	c, got := lendServer(t, map[string]func(*http.Request){
		"/check": func(r *http.Request) {
			select {
			case <-r.Context().Done():
				live <- false
			default:
				live <- true
			}
		},
	})
	br := bufio.NewReader(c)
	roundTrip(t, c, br, "/")
	first := <-got
	select {
	case <-first.ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done asked after the request ended: not closed")
	}
	roundTrip(t, c, br, "/check")
	next := <-got
	if next.ctx == first.ctx {
		t.Error("a context waited on after its request was lent again")
	}
	if !<-live {
		t.Error("the next request's context was done while it was served")
	}
}

// doneCtx is a connection's context that can end and is no cancelCtx:
// a child of it (context.WithCancel) keeps a goroutine until one of the
// two ends.
type doneCtx struct {
	context.Context
	ch chan struct{}
}

func (c *doneCtx) Done() <-chan struct{} { return c.ch }

// Err keeps the context's rule: non-nil once Done is closed (a child's
// goroutine panics on a nil one).
func (c *doneCtx) Err() error {
	select {
	case <-c.ch:
		return context.Canceled
	default:
		return nil
	}
}

// settledGoroutines is the goroutine count once it holds still (two
// readings 10 ms apart agree, within a second): goroutines on their way
// out are not counted.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			break
		}
		n = m
	}
	return n
}

// goroutinesBelow waits, up to 5 s, for fewer than limit goroutines, and
// returns the count it last saw: a leak keeps it at or above the limit.
func goroutinesBelow(limit int) int {
	n := runtime.NumGoroutine()
	for deadline := time.Now().Add(5 * time.Second); n >= limit && time.Now().Before(deadline); {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	return n
}

// TestHandOffEndsRequestContext: a head the scan accepts and newRequest
// refuses goes to the standard server after begin made the request's
// context: that context ends then, and keeps nothing (here a goroutine
// per connection) until its connection's does.
func TestHandOffEndsRequestContext(t *testing.T) {
	parent := &doneCtx{Context: context.Background(), ch: make(chan struct{})}
	defer close(parent.ch)
	std := newServer(http.NotFoundHandler(), io.Discard)
	std.BaseContext = func(net.Listener) context.Context { return parent }
	s := New(std)
	addr := serveOn(t, s)
	before := settledGoroutines()
	const n = 20
	for range n {
		c := dialOn(t, addr)
		_, _ = io.WriteString(c, "GET /%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		c.Close()
	}
	if after := goroutinesBelow(before + n/2); after-before >= n/2 {
		t.Errorf("goroutines %d -> %d after %d handed-off connections: their requests' contexts never ended", before, after, n)
	}
}

// TestWaitedContextChildren: children of a request's context made after
// its Done (a transport's timeouts) join the context.WithCancel Done
// made, as under net/http: no goroutine each.
func TestWaitedContextChildren(t *testing.T) {
	const n = 200
	ctx := &reqCtx{parent: context.Background()}
	ctx.cancelFn = ctx.cancel
	_ = ctx.Done()
	before := settledGoroutines()
	var cancels []context.CancelFunc
	for range n {
		_, cancel := context.WithCancel(ctx)
		cancels = append(cancels, cancel)
	}
	d := goroutinesBelow(before+n/2) - before
	ctx.cancel()
	for _, cancel := range cancels {
		cancel()
	}
	if d >= n/2 {
		t.Errorf("%d children of a waited request context: %d goroutines more, want none", n, d)
	}
}

// TestReuseRefusesLateDone: a Done asked for between a request's end and
// the next request's reuse (a late goroutine of the first) makes the
// context the first request's for good: reuse refuses it, so the next
// request never gets a Done already closed.
func TestReuseRefusesLateDone(t *testing.T) {
	c := &reqCtx{}
	c.cancelFn = c.cancel
	if !c.reuse(context.Background()) {
		t.Fatal("a new context refused")
	}
	c.cancel() // the request ends
	c.release()
	if !c.reuse(context.Background()) {
		t.Fatal("a context nobody waited on refused")
	}
	c.cancel()
	c.release()
	select {
	case <-c.Done(): // late: the ended request's
	default:
		t.Fatal("a late Done of an ended request is not closed")
	}
	if c.reuse(context.Background()) {
		t.Error("a context waited on after its request ended was lent again")
	}
}

// TestEndEmptiesBundle: a request nothing waited on gives its bundle
// back emptied (its Request but the context, its response, the hook's
// state through EndRequest, the connection's context let go); a waited
// one keeps it.
func TestEndEmptiesBundle(t *testing.T) {
	type connKey struct{}
	ended := 0
	std := newServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" {
			_ = r.Context().Done()
		}
		w.Header().Set("X-A", "1")
	}), io.Discard)
	std.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, "conn")
	}
	s := New(std)
	s.RequestContext = func(ctx, prev context.Context) context.Context {
		if prev != nil {
			return prev
		}
		return &endCtx{Context: ctx, ended: &ended}
	}
	addr := serveOn(t, s)
	c := dialOn(t, addr)
	br := bufio.NewReader(c)
	roundTrip(t, c, br, "/x?q=1")
	lentBack(t, s) // the answer is read a moment before the bundle is back
	s.lentMu.Lock()
	if len(s.lent) != 1 {
		t.Fatalf("%d bundles kept after a request, want 1", len(s.lent))
	}
	l := s.lent[0]
	s.lentMu.Unlock()
	if l.req.Header != nil || l.req.URL != nil || l.req.Method != "" || l.req.Context() != l.ctx {
		t.Errorf("the kept Request holds its request: %+v", l.req)
	}
	if l.resp.c != nil || l.resp.req != nil || l.resp.handlerHeader != nil || l.resp.status != 0 {
		t.Errorf("the kept response holds its request's: %+v", l.resp)
	}
	if v := l.rc.Value(connKey{}); v != nil || ended != 1 {
		t.Errorf("the kept context: connection value %v, EndRequest called %d times, want none and 1", v, ended)
	}
	roundTrip(t, c, br, "/wait")
	s.lentMu.Lock()
	n := len(s.lent)
	s.lentMu.Unlock()
	if n != 0 || ended != 1 {
		t.Errorf("after a waited request: %d bundles kept, EndRequest called %d times, want 0 and 1", n, ended)
	}
}

// endCtx is a hook's state that counts its EndRequest calls.
type endCtx struct {
	context.Context
	ended *int
}

func (c *endCtx) EndRequest() { *c.ended++ }

// serveOn serves s on a loopback listener until the test ends, and
// returns its address.
func serveOn(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.ServeStd() }()
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { s.Close() })
	return ln.Addr().String()
}

// dialOn connects to addr for the rest of the test.
func dialOn(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// lentBack waits until s keeps a bundle to lend (at most 5 s).
func lentBack(t *testing.T, s *Server) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		s.lentMu.Lock()
		n := len(s.lent)
		s.lentMu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no bundle given back to the server 5 s after the answer")
		}
	}
}

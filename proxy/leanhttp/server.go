// Package leanhttp is a lean HTTP/1.1 server loop for the sidecar's
// outbound listener (docs/benchmarks.md, "The lean server loop").
//
// net/http's server pays, per request, a background read on a goroutine
// of its own (so that the request's context ends when the client goes
// away) and several read deadline changes; at a steady rate of small
// requests those goroutine hand-offs and thread wake-ups are most of the
// sidecar's CPU. A Server reads each connection on the connection's
// goroutine, into a buffer it holds only while a request is served (an
// idle connection costs its parked goroutine and no buffers: reader.go),
// and serves the common case itself: keep-alive HTTP/1.1 and HTTP/1.0 requests (GET, HEAD, OPTIONS,
// DELETE, POST, PUT, PATCH) without a body or with one of a known length
// up to MaxBody, origin-form with a Host header or absolute-form, no
// Upgrade, no Expect, no pipelining. It calls the handler with a
// ResponseWriter that frames the response as net/http's does (response.go),
// and offers a proxy ways around per-request copies and contexts:
// SetHeader and SetRawHeader (answer with a header map, or lines, of its
// own), AfterCancel (a function called when the request's context ends)
// and Server.RequestContext (its per-request state as the request's
// context).
//
// One difference from net/http a handler must keep to: what the loop
// gives a request is lent, to request after request, and valid only
// until the handler returns. The request's Header (the map and values)
// and URL are its connection's; the Request itself, its ResponseWriter
// and its context are the server's, lent to the next request of any
// connection, unless the handler asked for the context's Done (directly,
// or by deriving a context or an AfterFunc from it): then those three
// are the request's own. A context kept past the handler without that
// (context.WithoutCancel of it, or the context itself, its Value or Err
// read later) becomes another request's: its values that request's, its
// Err nil again. A handler that keeps a request longer copies it
// (Request.Clone), as a ReverseProxy does, and derives what it keeps of
// the context while the request runs.
//
// Every other connection, from its first request the loop does not
// serve (a chunked or larger body, CONNECT, an upgrade, h2c, Expect, pipelined requests,
// malformed or oversized input), is handed to the standard *http.Server
// given to New, with the bytes already read sent first: everything
// outside the common case is served exactly as without this package, by
// the same server configuration (handler, limits, hooks).
//
// A request's context is cancelled when its client goes away without a
// background read per request: a request that takes longer than
// WatchAfter (100 ms) gets one then (see watch), and the read of the next
// request after the response notices any other.
package leanhttp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/internal/rawio"
	"github.com/minimesh/minimesh/proxy/internal/chanlistener"
	"github.com/minimesh/minimesh/proxy/internal/field"
)

// DefaultWatchAfter is how long a request runs before its connection is
// watched for the client going away. Shorter requests, most of a service's
// calls, pay nothing for it; their client's departure shows on the read
// of the next request, right after the response. A client that gives up
// within this time of sending leaves the upstream working for at most
// this long.
const DefaultWatchAfter = 100 * time.Millisecond

// readBufSize bounds the request heads the loop serves itself: a longer
// one (up to MaxHeaderBytes) goes to the standard server.
const readBufSize = 4 << 10

// Server serves HTTP/1.x connections, the common case itself and the
// rest through Std.
type Server struct {
	// Std is the standard server: its Handler serves every request, its
	// ReadHeaderTimeout, IdleTimeout, ConnState, ConnContext, BaseContext
	// and ErrorLog apply to the lean loop too, and it serves the
	// connections handed to it (ServeStd).
	Std *http.Server
	// WatchAfter: 0 is DefaultWatchAfter.
	WatchAfter time.Duration
	// RequestContext, when set, is given each request's context (the
	// loop's, cancelled as net/http's is) and returns the one the
	// request carries. A handler that extends its request's context with
	// per-request state of its own (outbound's) can make that state the
	// context here, where net/http's server leaves it a second copy of
	// the request (Request.WithContext), a quarter of a kilobyte each.
	// prev is what it returned for an earlier request when the loop
	// lends that request's context again (nothing waited on it), for the
	// hook to return again; nil otherwise. The loop calls the returned
	// context's EndRequest method, if it has one, as it takes the
	// context back: to let go of what the request left in it.
	RequestContext func(ctx, prev context.Context) context.Context

	handoff *chanlistener.Listener

	// The watchdog (see watchdog): requests in flight, and its wake-up
	// while it is parked.
	inflight atomic.Int64
	parked   atomic.Bool
	wake     chan struct{}
	dogWakes atomic.Int64 // the watchdog's timer wake-ups: for tests
	dogOnce  sync.Once
	done     chan struct{}

	// lent is what requests gave back (see lent), for the next ones.
	lentMu sync.Mutex
	lent   []*lent

	mu     sync.Mutex
	lns    map[net.Listener]struct{}
	conns  map[*conn]struct{}
	closed atomic.Bool
}

// New returns a Server in front of std.
func New(std *http.Server) *Server {
	return &Server{Std: std, handoff: chanlistener.New("lean-handoff"), lns: map[net.Listener]struct{}{}, conns: map[*conn]struct{}{},
		wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// ServeStd runs the standard server on the connections handed to it, until
// Close; run it beside Serve.
func (s *Server) ServeStd() error { return s.Std.Serve(s.handoff) }

// Serve accepts connections on ln and serves each on a goroutine of its
// own, until ln fails or Close. It closes ln when it returns, as
// http.Server.Serve does.
func (s *Server) Serve(ln net.Listener) error {
	defer ln.Close()
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lns, ln)
		s.mu.Unlock()
	}()
	ctx := context.Background()
	if s.Std.BaseContext != nil {
		ctx = s.Std.BaseContext(ln)
	}
	ctx = context.WithValue(ctx, http.ServerContextKey, s.Std)
	s.dogOnce.Do(func() { go s.watchdog() })
	var tempDelay time.Duration
	for {
		rw, err := ln.Accept()
		if err != nil {
			if s.closed.Load() {
				return http.ErrServerClosed
			}
			if ne, ok := err.(interface{ Temporary() bool }); ok && ne.Temporary() {
				// net/http's back-off on a temporary accept error (EMFILE).
				if tempDelay == 0 {
					tempDelay = 5 * time.Millisecond
				} else {
					tempDelay = min(2*tempDelay, time.Second)
				}
				s.logf("http: Accept error: %v; retrying in %v", err, tempDelay)
				time.Sleep(tempDelay)
				continue
			}
			return err
		}
		tempDelay = 0
		c := s.newConn(ctx, rw)
		s.setState(rw, http.StateNew)
		go c.serve()
	}
}

// Close closes the listeners Serve serves, every connection the lean loop
// holds, and the standard server's (http.Server.Close).
func (s *Server) Close() error {
	s.closed.Store(true)
	s.mu.Lock()
	for ln := range s.lns {
		ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.rwc.Close()
		// A request not yet watched (younger than WatchAfter) learns of
		// the close as a watched one does, from its watch's read, which
		// fails at once: net/http's Close cancels every request in flight
		// through its background read, and a handler that waits on its
		// context (a slow upstream) must not outlive the server.
		if c.reqStart.Load() != 0 && c.wstate.Load() == wReq {
			go c.watch()
		}
	}
	s.handoff.Close()
	s.mu.Lock()
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.mu.Unlock()
	return s.Std.Close()
}

func (s *Server) shuttingDown() bool { return s.closed.Load() }

func (s *Server) logf(format string, args ...any) {
	if s.Std.ErrorLog != nil {
		s.Std.ErrorLog.Printf(format, args...)
	} else {
		log.Printf(format, args...)
	}
}

func (s *Server) setState(c net.Conn, st http.ConnState) {
	if h := s.Std.ConnState; h != nil {
		h(c, st)
	}
}

// leanable reports whether the loop may serve requests at all: the
// timeouts it implements are the read header and idle ones.
func (s *Server) leanable() bool {
	return s.Std.ReadTimeout == 0 && s.Std.WriteTimeout == 0 && !s.closed.Load()
}

// conn is one connection served by the lean loop.
type conn struct {
	s      *Server
	rwc    net.Conn
	ctx    context.Context
	remote string

	// br and bw hold no buffers while the connection waits for a
	// request: both go back to their pools (reader).
	br   reader
	bw   *bufio.Writer
	werr error // a write to the connection failed
	// rdl is the read deadline last set (aLongTimeAgo: unknown).
	rdl time.Time
	// idleDL is the deadline idleDeadline set last, at idleSet
	// (sinceBoot): while rdl is still it, the clock alone says whether it
	// moves.
	idleDL  time.Time
	idleSet int64
	// headDL is the ReadHeaderTimeout deadline of the head being read,
	// zero when none runs: a connection handed off mid-head keeps it
	// (handoffConn), as net/http would have.
	headDL time.Time
	// wdl: a handler set a write deadline (ResponseController), which
	// net/http clears after the request.
	wdl bool

	dateSec int64
	dateStr [len(http.TimeFormat)]byte
	// hdr is the map of a response's Header, made once per connection
	// (its requests come one at a time) and emptied after each; rs is
	// the same for the request's header, values and URL.
	hdr http.Header
	rs  reqScratch

	// The watch: see watch.
	reqStart atomic.Int64 // the current request's start (monotonic, sinceBoot), 0 between requests
	wstate   atomic.Int32
	aborted  atomic.Bool
	gone     atomic.Bool
	cancel   context.CancelFunc // the current request's

	// lend: the connection's context never ends, so its requests' are
	// lent (begin); l is the current request's.
	lend bool
	l    *lent
	// after is what the request's handler registered with AfterCancel
	// (nil: nothing), ended that the request's context was cancelled;
	// amu guards both against the watch.
	amu       sync.Mutex
	after     func()
	ended     bool
	stopAfter func() bool // c.unregister, made once
	watchDone chan struct{}
	// wmu orders the watch's clearing of the read deadline before
	// unwatch's abort: without it the abort could come in between and be
	// undone, leaving the watch's read, and the response, waiting for
	// the client.
	wmu     sync.Mutex
	hasByte bool // the watch read a byte of what follows: it comes first
	byteBuf [1]byte

	body *reqBody // the current request's, if it has one
	// inFlight is the response whose handler runs: a panic out of it
	// ends its request and watch.
	inFlight *response
}

const (
	wIdle  = iota // between requests
	wReq          // a request is served, unwatched
	wWatch        // a request is served and watched
	// wBody: a request is served, its body not yet read: no watch, whose
	// read of the connection would take the body's bytes.
	wBody
)

var aLongTimeAgo = time.Unix(1, 0)

func (s *Server) newConn(ctx context.Context, rw net.Conn) *conn {
	c := &conn{s: s, rwc: rw, ctx: ctx, watchDone: make(chan struct{}, 1)}
	c.br.c = c
	c.br.lazy, _ = rw.(rawio.LazyReader)
	c.stopAfter = c.unregister
	if ra := rw.RemoteAddr(); ra != nil {
		c.remote = ra.String()
	}
	return c
}

// errWriter notes a failed write, and ends the request in progress: its
// client is gone (net/http's checkConnErrorWriter).
type errWriter struct{ c *conn }

func (w errWriter) Write(p []byte) (int, error) {
	n, err := w.c.rwc.Write(p)
	if err != nil && w.c.werr == nil {
		w.c.werr = err
		if w.c.cancel != nil {
			w.c.cancelRequest()
		}
	}
	return n, err
}

var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

// writer readies the connection's writer for a response.
func (c *conn) writer() {
	if c.bw == nil {
		c.bw = writers.Get().(*bufio.Writer)
		c.bw.Reset(errWriter{c})
	}
}

// releaseWriter gives the writer back between requests: everything
// written is flushed by then.
func (c *conn) releaseWriter() {
	if c.bw != nil && c.bw.Buffered() == 0 {
		c.bw.Reset(nil)
		writers.Put(c.bw)
		c.bw = nil
	}
}

// serve runs the loop on one connection: it ends with the connection
// closed, or handed to the standard server.
func (c *conn) serve() {
	s := c.s
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	handedOff := false
	defer func() {
		if err := recover(); err != nil && err != http.ErrAbortHandler {
			const size = 64 << 10
			buf := make([]byte, size)
			buf = buf[:runtime.Stack(buf, false)]
			s.logf("http: panic serving %v: %v\n%s", c.remote, err, buf)
		}
		if c.inFlight != nil {
			c.cancelRequest()
			c.unwatch()
		}
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		if handedOff {
			return
		}
		if c.bw != nil {
			_ = c.bw.Flush() // what had gone past the response's own buffer, as net/http
			c.bw.Reset(nil)
			writers.Put(c.bw)
		}
		c.rwc.Close()
		if b := c.body; b != nil {
			// A read of the body still running (a transport's, from a
			// handler that panicked) ends with the connection: wait it
			// out before the reader goes back to the pool.
			b.close()
		}
		c.br.drop()
		s.setState(c.rwc, http.StateClosed)
	}()

	ctx := c.ctx
	if h := s.Std.ConnContext; h != nil {
		ctx = h(ctx, c.rwc)
		if ctx == nil {
			panic("ConnContext returned nil")
		}
	}
	c.ctx = context.WithValue(ctx, http.LocalAddrContextKey, c.rwc.LocalAddr())
	// A connection's context that ends of its own (BaseContext, ConnContext
	// with a cancel) ends its requests': context.WithCancel's, each new.
	c.lend = c.ctx.Done() == nil

	// A new connection waits for its first byte as a keep-alive one waits
	// for its next request, under the idle timeout: clients dial before
	// they need a connection (Go's Transport parks one it dialled and did
	// not use; browsers and JVM pools preconnect), and a cut at
	// ReadHeaderTimeout from the accept, net/http's, races the request
	// they send on it later. The head's ReadHeaderTimeout runs from its
	// first byte (readHead), for the first request as for the next. Never
	// shorter than net/http's wait: without an idle timeout (or with one
	// under ReadHeaderTimeout), ReadHeaderTimeout bounds it as before.
	c.setReadDeadline(max(s.Std.IdleTimeout, s.Std.ReadHeaderTimeout), time.Now())
	first := true
	for {
		if !s.leanable() {
			handedOff = c.handOff()
			return
		}
		if !first && c.br.Buffered() == 0 && !c.hasByte {
			// Between requests: the idle timeout. The deadline moves only
			// when it is more than idleSlack off, not on every request.
			c.idleDeadline()
			// An idle connection holds no buffers: if the next request
			// is not there yet, both go back to their pools as the
			// goroutine parks, and a buffer comes back with its bytes.
			c.br.idle = true
			// The client's next request follows the response just
			// written, tens of microseconds later. Read now, and the
			// read finds nothing (a system call) and the goroutine parks
			// until the poller sees the bytes. Under load other
			// connections are ready to run: they go first, and by the
			// time this one reads, its next request is often there,
			// read with no wait. Alone, the yield comes straight back
			// (no system call): the read and the wait are as before
			// (docs/benchmarks.md, "Other connections first").
			runtime.Gosched()
		}
		_, err := c.br.Peek(1)
		c.br.idle = false
		if err != nil {
			return // closed, idle timeout, reset: as net/http, no answer
		}
		switch c.serveOne() {
		case connNext:
			first = false
		case connHandedOff:
			handedOff = true
			return
		default:
			return
		}
	}
}

// outcome is what becomes of a connection after a request.
type outcome int

const (
	connNext      outcome = iota // it waits for the next
	connDone                     // it closes
	connHandedOff                // the standard server has it
)

// serveOne serves the request whose first bytes the reader holds. It is
// serve's loop body, out of serve's frame: the stack an idle connection
// waits on is serve's, and kept under a quarter of the 8 KB a request
// grows it to, the collector halves it (docs/benchmarks.md, "Per idle
// connection").
func (c *conn) serveOne() outcome {
	s := c.s
	n, bodyLen, v := c.readHead()
	switch v {
	case needMore:
		return connDone // timed out or failed half way: net/http answers none either
	case handOff:
		c.handOff()
		return connHandedOff
	}
	head, _ := c.br.Peek(n)
	req := c.begin()
	if !newRequest(head, &c.rs, req) {
		// Nothing of the request's may outlive it: its context ends.
		c.cancel()
		c.cancel, c.l = nil, nil
		c.handOff() // the head is still in the reader
		return connHandedOff
	}
	// Active only now that the head is in, as net/http reports it: a
	// head that stalls part way stays new (or idle), and the drain closes
	// it after its idle grace without a byte, as it does on net/http's
	// server, rather than at the header timeout. The connection's reads
	// record their bytes for the drain meanwhile (connlimit).
	s.setState(c.rwc, http.StateActive)
	_, _ = c.br.Discard(n)
	c.headDL = time.Time{}
	if bodyLen > 0 {
		// Its own, not the connection's: a reader the handler left
		// behind finds it closed, never the next request's body.
		c.body = &reqBody{c: c, left: int64(bodyLen)}
		req.Body, req.ContentLength = c.body, int64(bodyLen)
		// No deadline for the body, as net/http's server sets none
		// without a ReadTimeout: the handler bounds its reads
		// (ResponseController.SetReadDeadline; outbound's
		// --request-body-timeout).
		if !c.rdl.IsZero() {
			c.rdl = time.Time{}
			_ = c.rwc.SetReadDeadline(time.Time{})
		}
	}

	req.RemoteAddr = c.remote
	w := &c.l.resp
	var connection string // one look, for both, when there is one
	if c.rs.lines.Connection {
		connection = field.Get(req.Header, "Connection")
	}
	*w = response{
		c: c, req: req, contentLength: -1,
		wants10KeepAlive: req.ProtoMajor == 1 && req.ProtoMinor == 0 && hasToken(connection, "keep-alive"),
		wantsClose:       req.Close || hasToken(connection, "close"),
	}
	c.amu.Lock()
	c.after, c.ended = nil, false
	c.amu.Unlock()
	c.arm(bodyLen > 0)
	c.writer()
	c.inFlight = w
	handler := s.Std.Handler
	if handler == nil {
		handler = http.DefaultServeMux
	}
	handler.ServeHTTP(w, req)
	c.inFlight = nil
	c.unwatch()
	c.cancelRequest()
	w.finish()
	c.cancel = nil
	reuse := w.shouldReuseConnection()
	synced := true
	if bodyLen > 0 {
		// The rest of the body is dropped only for a next request:
		// a connection that closes anyway does not wait for it.
		synced = c.endBody(reuse)
		c.body = nil
	}
	// Emptied as the response ends, not as the next begins: its
	// values (a proxy's, the request's state) would stay alive with
	// an idle connection, 3 KB each (docs/benchmarks.md).
	clear(c.hdr)
	c.rs.reset()
	c.end()
	if c.wdl {
		c.wdl = false
		_ = c.rwc.SetWriteDeadline(time.Time{})
	}
	if !synced && !c.gone.Load() {
		c.linger()
	}
	if c.gone.Load() || !reuse || !synced {
		return connDone
	}
	s.setState(c.rwc, http.StateIdle)
	if s.shuttingDown() {
		return connDone
	}
	return connNext
}

// begin readies the next request's context, Request and response: a
// lent bundle of them that no one can hold past its request (reqCtx),
// from the server's pool, or new ones on a connection whose context can
// end. The Request is empty but for its context, for newRequest to fill.
func (c *conn) begin() *http.Request {
	var l *lent
	var base, prev context.Context
	if c.lend {
		l = c.s.getLent()
		for !l.rc.reuse(c.ctx) {
			l = c.s.getLent() // waited on since it came back: let go
		}
		base, prev, c.cancel = &l.rc, l.ctx, l.rc.cancelFn
	} else {
		l = new(lent)
		base, c.cancel = context.WithCancel(c.ctx)
	}
	ctx := base
	if f := c.s.RequestContext; f != nil {
		ctx = f(base, prev)
	}
	if ctx != l.ctx {
		l.tmpl = *new(http.Request).WithContext(ctx)
		l.ctx = ctx
	}
	l.req = l.tmpl
	c.l = l
	return &l.req
}

// end gives the request's bundle back to the server as its response
// ends, emptied, unless its context was waited on: nothing in it keeps
// the request's values, its connection or what the hook's state held
// (RequestContext) alive until the next request.
func (c *conn) end() {
	l := c.l
	c.l = nil
	if !c.lend || l.rc.waited() {
		return
	}
	l.req = l.tmpl
	l.resp = response{}
	if e, ok := l.ctx.(interface{ EndRequest() }); ok {
		e.EndRequest()
	}
	l.rc.release()
	c.s.putLent(l)
}

// lent is what the loop lends a request, and takes back when nothing
// can hold it past the request's end (its context was not waited on):
// the context (whose parent is the request's connection's), what
// RequestContext made of it, the Request and its template (empty but
// for ctx), the response. The server keeps those its requests gave back
// (up to maxLent), for any of its connections: an idle connection keeps
// none.
type lent struct {
	rc   reqCtx
	ctx  context.Context
	req  http.Request
	tmpl http.Request
	resp response
}

// maxLent bounds the bundles a server keeps between requests: as many as
// requests are served at once, most of the time; about 2.5 KB each with
// outbound's state emptied (EndRequest) and its room for response lines
// (at most 4 KB), 160–420 KB in all.
const maxLent = 64

// getLent returns a bundle its last request gave back, or a new one.
func (s *Server) getLent() *lent {
	s.lentMu.Lock()
	if n := len(s.lent); n > 0 {
		l := s.lent[n-1]
		s.lent[n-1] = nil
		s.lent = s.lent[:n-1]
		s.lentMu.Unlock()
		return l
	}
	s.lentMu.Unlock()
	l := new(lent)
	l.rc.cancelFn = l.rc.cancel
	return l
}

func (s *Server) putLent(l *lent) {
	s.lentMu.Lock()
	if len(s.lent) < maxLent {
		s.lent = append(s.lent, l)
	}
	s.lentMu.Unlock()
}

// readHead waits until the buffer holds a whole request head and returns
// its length and its body's with serveLean, or handOff, or needMore when
// the connection failed first. The rest of a head that did not come in one piece must
// come within ReadHeaderTimeout of its first bytes.
func (c *conn) readHead() (n, body int, v verdict) {
	armed := false
	for {
		buf, _ := c.br.Peek(c.br.Buffered())
		n, body, v := scan(buf, &c.rs.facts)
		switch v {
		case serveLean:
			if c.br.Buffered() > n+body || c.hasByte {
				return 0, 0, handOff // pipelined: net/http's
			}
			return n, body, v
		case handOff:
			return 0, 0, v
		}
		if c.br.Buffered() >= c.br.Size() {
			return 0, 0, handOff // longer than the loop's buffer: net/http applies MaxHeaderBytes
		}
		if !armed {
			c.setReadDeadline(c.s.Std.ReadHeaderTimeout, time.Now())
			c.headDL = c.rdl
			armed = true
		}
		if _, err := c.br.Peek(c.br.Buffered() + 1); err != nil {
			if errors.Is(err, io.EOF) {
				// A head cut short: net/http answers 400.
				return 0, 0, handOff
			}
			return 0, 0, needMore
		}
	}
}

// idleSlack is how much longer than IdleTimeout an idle connection may
// stay open: the deadline is set to IdleTimeout + idleSlack from the end
// of a response and moved again only once it falls below IdleTimeout
// from the end of a later one, not on every request. Never earlier than
// net/http closes it, at most a second (a tenth of the timeout) later.
const idleSlack = time.Second

func (c *conn) idleDeadline() {
	d := c.s.Std.IdleTimeout
	if d == 0 {
		d = c.s.Std.ReadTimeout
	}
	if d <= 0 {
		if !c.rdl.IsZero() {
			c.rdl = time.Time{}
			_ = c.rwc.SetReadDeadline(time.Time{})
		}
		return
	}
	// The deadline it set last, idleSlack ago or less, is still at least
	// IdleTimeout away: one read of the monotonic clock (sinceBoot), where
	// time.Now reads the wall clock too and Sub made a Duration of two
	// instants, ~100 instructions a request. Any other deadline (a head's,
	// the watch's, none) moves.
	slack := min(idleSlack, d/10)
	now := sinceBoot()
	if c.rdl.IsZero() || c.rdl != c.idleDL || now-c.idleSet > int64(slack) {
		c.rdl = time.Now().Add(d).Add(slack)
		c.idleDL, c.idleSet = c.rdl, now
		_ = c.rwc.SetReadDeadline(c.rdl)
	}
}

func (c *conn) setReadDeadline(d time.Duration, now time.Time) {
	var t time.Time
	if d > 0 {
		t = now.Add(d)
	}
	c.rdl = t
	_ = c.rwc.SetReadDeadline(t)
}

// header returns the connection's header map for the current response.
func (c *conn) header() http.Header {
	if c.hdr == nil {
		c.hdr = make(http.Header)
	}
	return c.hdr
}

// date is the Date header's value, formatted once a second.
func (c *conn) date() []byte {
	now := time.Now()
	if sec := now.Unix(); sec != c.dateSec {
		c.dateSec = sec
		now.UTC().AppendFormat(c.dateStr[:0], http.TimeFormat)
	}
	return c.dateStr[:]
}

func (s *Server) watchAfter() time.Duration {
	if s.WatchAfter > 0 {
		return s.WatchAfter
	}
	return DefaultWatchAfter
}

// boot is when the package began: sinceBoot's zero.
var boot = time.Now()

// sinceBoot is the monotonic clock in nanoseconds since boot, one clock
// read where time.Now reads the wall clock too; never 0 (reqStart's
// "between requests") once a nanosecond has passed.
func sinceBoot() int64 { return int64(time.Since(boot)) | 1 }

// arm makes the current request one the watchdog looks at, once its
// body, if it has one, is read (reqBody).
func (c *conn) arm(body bool) {
	if body {
		c.wstate.Store(wBody)
	} else {
		c.wstate.Store(wReq)
	}
	s := c.s
	c.reqStart.Store(sinceBoot())
	if s.inflight.Add(1) == 1 && s.parked.Load() {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// watchdog starts the watch of every request served for WatchAfter. It
// sleeps until the oldest request in flight that is not yet due will be
// (at least WatchAfter/4 between looks, so a request is watched within
// WatchAfter and a quarter), and parks while none is in flight: a request
// costs it two atomic additions and two stores. Under a steady stream of
// short requests it looks about once per WatchAfter. (A timer per
// request, tried first, is added to the runtime's timer heap and, being
// the earliest timer, wakes the thread sleeping in the network poller:
// strace counted 0.3 more futex and 0.7 more epoll_pwait calls per
// request than with the watchdog. A look every WatchAfter/2, the next
// design, was 20 timer wake-ups a second at any rate, each also waking
// the runtime's monitor thread: docs/benchmarks.md, "Timers only while
// there is work".)
func (s *Server) watchdog() {
	after := s.watchAfter()
	t := time.NewTimer(after)
	defer t.Stop()
	var conns []*conn
	for {
		select {
		case <-t.C:
			s.dogWakes.Add(1)
		case <-s.done:
			return
		}
		if s.inflight.Load() == 0 {
			s.parked.Store(true)
			if s.inflight.Load() == 0 { // a request that started before parked was set is seen here
				select {
				case <-s.wake:
				case <-s.done:
					return
				}
			}
			s.parked.Store(false)
			t.Reset(after) // the request that woke it is due then
			continue
		}
		now := sinceBoot()
		next := int64(after)
		conns = conns[:0]
		s.mu.Lock()
		for c := range s.conns {
			switch st := c.reqStart.Load(); {
			case st == 0:
			case now-st >= int64(after):
				conns = append(conns, c)
			default:
				next = min(next, st+int64(after)-now)
			}
		}
		s.mu.Unlock()
		for _, c := range conns {
			if c.wstate.Load() == wReq {
				go c.watch()
			}
		}
		clear(conns)
		t.Reset(max(time.Duration(next), after/4))
	}
}

// cancelRequest cancels the current request's context, then runs what
// its handler registered with AfterCancel: in that order, as a context
// runs its AfterFunc callbacks once its Err is set.
func (c *conn) cancelRequest() {
	c.cancel()
	c.amu.Lock()
	f := c.after
	c.after, c.ended = nil, true
	c.amu.Unlock()
	if f != nil {
		f()
	}
}

// unregister is AfterCancel's stop.
func (c *conn) unregister() bool {
	c.amu.Lock()
	had := c.after != nil
	c.after = nil
	c.amu.Unlock()
	return had
}

// watch runs when a request has been served for WatchAfter: it reads the
// connection until the client closes it (EOF, reset), which cancels the
// request, as net/http's background read does for every request. A byte
// that arrives instead (a pipelined request) is kept for the loop. The
// loop ends the read when the request is over (unwatch).
func (c *conn) watch() {
	c.wmu.Lock()
	if !c.wstate.CompareAndSwap(wReq, wWatch) {
		c.wmu.Unlock()
		return // the request is over
	}
	_ = c.rwc.SetReadDeadline(time.Time{})
	c.wmu.Unlock()
	n, err := c.rwc.Read(c.byteBuf[:])
	if n == 1 {
		c.hasByte = true
	}
	var ne net.Error
	if err != nil && !(c.aborted.Load() && errors.As(err, &ne) && ne.Timeout()) {
		c.gone.Store(true)
		if c.cancel != nil {
			c.cancelRequest()
		}
	}
	c.watchDone <- struct{}{}
}

// unwatch ends the current request's watch, waiting for its read.
func (c *conn) unwatch() {
	if c.reqStart.Swap(0) != 0 {
		c.s.inflight.Add(-1)
	}
	// The state moves on its own (the body's end, the watch's start):
	// from whichever it is.
	for {
		st := c.wstate.Load()
		if st == wIdle {
			return
		}
		if st == wWatch {
			break
		}
		if c.wstate.CompareAndSwap(st, wIdle) {
			return
		}
	}
	c.aborted.Store(true)
	c.wmu.Lock() // after the watch cleared the deadline, not before
	_ = c.rwc.SetReadDeadline(aLongTimeAgo)
	c.wmu.Unlock()
	<-c.watchDone
	c.aborted.Store(false)
	c.wstate.Store(wIdle)
	c.rdl = aLongTimeAgo // set again before the next read
}

// handOff gives the connection to the standard server, with the bytes
// read and not yet served (what the reader holds) sent first.
// It returns true: the connection is no longer the loop's (handed off, or
// closed when the standard server is).
func (c *conn) handOff() bool {
	hc := &handoffConn{Conn: c.rwc, br: &c.br, cr: c}
	if c.s.Std.ReadTimeout == 0 {
		// (The standard server then clears the read deadline once it
		// has read the head, which ends the cap.)
		hc.headDL = c.headDL
	}
	if c.bw != nil {
		_ = c.bw.Flush()
		c.bw.Reset(nil)
		writers.Put(c.bw)
		c.bw = nil
	}
	// The standard server sets its own deadlines; none of the loop's may
	// linger in the meantime.
	_ = c.rwc.SetReadDeadline(time.Time{})
	if !c.s.handoff.Put(hc) {
		// The standard server is closed: so is the connection.
		c.rwc.Close()
		c.s.setState(c.rwc, http.StateClosed)
	}
	return true
}

// handoffConn is a connection handed to the standard server: its Read
// returns the bytes the loop read and did not serve first.
type handoffConn struct {
	net.Conn
	br *reader
	cr *conn
	// headDL caps the standard server's read deadlines while it reads
	// the head the loop began to wait for: its ReadHeaderTimeout, counted
	// from the hand-off, would otherwise give a slow head up to twice
	// the time net/http alone allows.
	headDL time.Time
	// te10 refuses HTTP/1.0 requests with Transfer-Encoding, which
	// net/http would take without their bodies (TE10Guard).
	te10 TE10Guard
}

func (c *handoffConn) SetReadDeadline(t time.Time) error {
	if !c.headDL.IsZero() {
		if t.IsZero() {
			c.headDL = time.Time{} // the head is read
		} else if t.After(c.headDL) {
			t = c.headDL
		}
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *handoffConn) Read(p []byte) (n int, err error) {
	if c.br != nil && (c.br.Buffered() > 0 || c.cr.hasByte) {
		n, err = c.br.Read(p)
	} else {
		if c.br != nil {
			c.br.drop()
			c.br, c.cr = nil, nil
		}
		n, err = c.Conn.Read(p)
	}
	c.te10.Scan(p[:n]) // the loop's bytes too: they hold the head it handed off
	return n, err
}

// Unwrap is the accepted connection, for hooks that look for their own
// type (connlimit, the original destination of a redirected one).
func (c *handoffConn) Unwrap() net.Conn { return c.Conn }

// CloseWrite half-closes the connection, as a *net.TCPConn does.
func (c *handoffConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

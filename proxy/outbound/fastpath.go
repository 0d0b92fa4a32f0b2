package outbound

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/internal/rawio"
	"github.com/minimesh/minimesh/proxy/internal/field"
	"github.com/minimesh/minimesh/proxy/internal/nobody"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// fastTransport sends HTTP/1.1 requests without a body, or with a small
// one the forwarder holds whole (most of a service's calls), on the
// calling goroutine: it writes the request and reads the response
// itself, where http.Transport hands each request to a write-loop
// goroutine and the response back from a read-loop goroutine. Those
// hand-offs are thread wake-ups, and at a steady request rate they were
// most of the sidecar's CPU (docs/benchmarks.md). Everything else
// (streamed and larger bodies, Expect, upgrades, CONNECT) goes to
// http.Transport.
type fastTransport struct {
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	fallback http.RoundTripper
	maxIdle  int

	// maxTotal bounds the kept connections of every key together
	// (maxIdleTotal): maxIdle alone bounds each key's, and an app that
	// names thousands of authorities held thousands of idle connections.
	maxTotal int

	mu      sync.Mutex
	idle    map[string]*idleList // by authority, case folded (reqState.point)
	last    *idleList            // the list get or release used last: nil, or in idle
	sweeper *time.Timer          // while idle holds any connection
	// oldest and newest end the list of every kept connection, of any
	// key, in the order they were kept (fconn.older, newer), and kept
	// counts them: at maxTotal the oldest gives its place (release).
	oldest, newest *fconn
	kept           int
	// evicted counts the kept connections closed to give their place to
	// a newer one at maxTotal (minimesh_connections_evicted_total).
	evicted atomic.Uint64
}

// maxIdleTotal is the most idle upstream connections a transport keeps,
// all authorities together, as Go's DefaultTransport bounds its own
// (MaxIdleConns, 100 there). Each costs a file descriptor, and memory no
// collector reclaims: about 30 KB on Go's transport (two goroutines and
// their buffers), less on the fast one (a 4 KiB reader). 5,000
// authorities called once each held 5,014 descriptors and 78.6 MB, over
// the chart's 128Mi with the rest; 1,024 on each transport stays within
// it beside the 1,024 client connections' 28 MiB, and is still more than
// a sidecar whose app keeps 1,024 calls in flight at once needs (Envoy's
// default connection limit per cluster is 1,024 too).
const maxIdleTotal = 1024

// idleList is the kept connections to one authority, most recently used
// last. A pointer in the map, so that taking a connection does not store
// the list back; and the one used last is found without hashing its key,
// as most requests go where the one before went (list).
type idleList struct {
	key   string
	conns []*fconn
}

// list is the kept connections to key; with create, an empty list is
// added if there is none. mu is held.
func (t *fastTransport) list(key string, create bool) *idleList {
	if l := t.last; l != nil && l.key == key {
		return l
	}
	l := t.idle[key]
	if l == nil {
		if !create {
			return nil
		}
		l = &idleList{key: key}
		t.idle[key] = l
	}
	t.last = l
	return l
}

// fconn is one upstream connection with its buffers.
type fconn struct {
	net.Conn
	br *bufio.Reader
	// out is the request head, written by the first Read of its answer
	// (rawio.Exchange): one wait for the answer, and no look at the
	// connection but the one that Exchange makes.
	out  bytes.Buffer
	key  string
	read int64 // bytes read from the connection, to tell a dead reused one
	// used is when c was last released, on the monotonic clock (mono).
	used time.Duration
	// limit bounds the bytes read for a response head (0: no bound):
	// http.ReadResponse itself sets none.
	limit int64
	// tee, while not nil, gets every byte Read reads: the raw head of a
	// response http.ReadResponse reads past the buffer (send), bounded
	// by limit, for what its Connection field lists (closeListed). Set
	// only once the request is out, so never on rawio.Exchange's read.
	tee []byte
	// wake unblocks the connection's reads and writes when a request's
	// context ends: made once per connection, not a closure per request.
	wake func()
	// fields is writeRequestHead's scratch for sorting header fields.
	fields []headerField
	// dl is the deadline the connection's reads and writes have, as set
	// by setDeadline (zero: none). It stays when the connection goes
	// idle, and the next request's send replaces it: one deadline change
	// per request, not three (docs/benchmarks.md). unblock, from another
	// goroutine, does not tell it: a woken connection is never kept.
	dl time.Time
	// kept is the dialer's record of the connection (connPools), whose
	// flag says its endpoint has left every Service's endpoints; nil for
	// a connection to a name. Conn is the connection under it, so that
	// reads and writes do not go through it.
	kept *keptConn
	// older and newer link c, while kept, into its transport's list of
	// every kept connection (fastTransport.oldest): under its mu.
	older, newer *fconn
}

// retired reports whether c's endpoint has left every Service's
// endpoints (connPools.retire): no new request goes on it.
func (c *fconn) retired() bool { return c.kept != nil && c.kept.retired.Load() }

// Close closes c, and forgets it in the dialer's record.
func (c *fconn) Close() error {
	if c.kept != nil {
		return c.kept.Close()
	}
	return c.Conn.Close()
}

// setDeadline gives c's reads and writes the deadline t (zero: none),
// unless they have it already.
func (c *fconn) setDeadline(t time.Time) {
	if !t.Equal(c.dl) {
		_ = c.SetDeadline(t)
		c.dl = t
	}
}

func (c *fconn) unblock() { _ = c.SetDeadline(time.Unix(1, 0)) }

// maxKeptOut bounds the room for requests a connection keeps: a head's,
// not a body's (fastBodyMax).
const maxKeptOut = 4 << 10

var errHeadTooLarge = errors.New("upstream response headers larger than 64 KiB")

func (c *fconn) Read(p []byte) (int, error) {
	if c.limit > 0 {
		// As http.Transport bounds a head: no read past the limit, so
		// that the bound is the head's bytes, not a buffer more.
		if c.read >= c.limit {
			return 0, errHeadTooLarge
		}
		if left := c.limit - c.read; int64(len(p)) > left {
			p = p[:left]
		}
	}
	if c.out.Len() > 0 {
		n, err := rawio.Exchange(c.Conn, c.out.Bytes(), p)
		c.out.Reset()
		if c.out.Cap() > maxKeptOut {
			c.out = bytes.Buffer{} // a body's room is not kept with an idle connection
		}
		c.read += int64(n)
		if err == rawio.ErrUnasked {
			// Nothing was written: the connection is spoilt, not the try.
			err = &staleError{err: err, unsent: true}
		}
		return n, err
	}
	n, err := c.Conn.Read(p)
	c.read += int64(n)
	if c.tee != nil {
		c.tee = append(c.tee, p[:n]...)
	}
	return n, err
}

// idleTimeout drops kept connections unused this long: servers close
// theirs after about a minute, and a dead one costs a retry.
const idleTimeout = 50 * time.Second

func newFastTransport(dial func(context.Context, string, string) (net.Conn, error), fallback http.RoundTripper, maxIdle int) *fastTransport {
	return &fastTransport{dial: dial, fallback: fallback, maxIdle: maxIdle, maxTotal: maxIdleTotal, idle: map[string]*idleList{}}
}

// poolKey is authority, the host:port a try dials, as every transport's
// pool keys it (reqState.point aims a try with it): DNS names compare
// without case (RFC 4343), so "Localhost:8080" and
// "localhost:8080" share one list of connections, not one each. Lowered
// only when it holds an upper-case byte, so the usual authority is its
// own key, without an allocation. An IPv6 zone ("%eth0", after the
// address) keeps its case: an interface's name is case-sensitive.
// Endpoints' and original destinations' keys are addresses, which the
// same folding leaves one key per address.
func poolKey(authority string) string {
	for i := 0; i < len(authority); i++ {
		switch c := authority[i]; {
		case c == '%':
			return authority
		case 'A' <= c && c <= 'Z':
			b := []byte(authority)
			for j := i; j < len(b) && b[j] != '%'; j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return authority
}

// fastBodyMax bounds the request bodies the fast transport sends: whole,
// with the head, in one write that fits a socket's send buffer as it
// starts (16 KiB, Linux's tcp_wmem default), so that the write does not
// wait for an upstream that answers early without reading the body (and
// were the buffer smaller, the try's deadline ends the wait);
// http.Transport, which writes from a goroutine of its own while it
// reads the answer, sends larger ones.
const fastBodyMax = 16 << 10

// eligible reports whether the fast transport sends req, a request
// whose body it cannot hold (RoundTrip's), itself.
func eligible(req *http.Request) bool {
	return sendable(req, nil) && field.Get(req.Header, "Upgrade") == ""
}

// sendable is eligible but for the Upgrade field, which a caller that
// knows the request has none need not look up, for req with body, its
// whole body (nil: none; then req must have none).
func sendable(req *http.Request, body []byte) bool {
	if req.Method == http.MethodConnect || req.URL.Scheme != "http" || !req.ProtoAtLeast(1, 0) {
		return false
	}
	if body == nil {
		return req.Body == nil || nobody.Is(req.Body)
	}
	return req.ContentLength == int64(len(body)) && holdable(req)
}

// holdable reports whether the body of req is one the forwarder may hold
// whole for the fast transport to send with the head: at most
// fastBodyMax bytes, not chunked, without trailers or Expect (100-continue
// is http.Transport's to wait for). The one test for fastProxied, the
// forwarder's hold and sendable.
func holdable(req *http.Request) bool {
	return req.ContentLength <= fastBodyMax && len(req.TransferEncoding) == 0 && req.Trailer == nil &&
		field.Get(req.Header, "Expect") == ""
}

func (t *fastTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !eligible(req) {
		return t.fallback.RoundTrip(req)
	}
	return t.roundTrip(req, deadlines{}, nil, new(respScratch))
}

// deadlines are a try's timeouts as instants (zero: none). try is the
// per-try timeout: the connect, the write and the response head must be
// done by then, or the try fails with errPerTryTimeout. whole is the
// request's timeout, which goes on through the response body: past it,
// the try fails with errTimeout, and a read of the body with a timeout.
// On the transport's other path, both are contexts (handler.go's serve,
// forward.go's try). now is when the try began on mono's clock, if its
// caller read it to set try (zero: get reads it): one clock read a try.
type deadlines struct {
	try, whole time.Time
	now        time.Duration
}

// head is the deadline for the response head, and the error that says
// it passed.
func (d deadlines) head() (time.Time, error) {
	if !d.whole.IsZero() && (d.try.IsZero() || !d.whole.After(d.try)) {
		return d.whole, errTimeout
	}
	return d.try, errPerTryTimeout
}

// roundTrip sends an eligible request by its deadlines. With raw not
// nil, a response head of the common kind (readResponseHead) comes back
// as lines in *raw, and the response's Header is nil; *raw is nil for
// any other.
//
// The response, when read without net/http, is sc's (respScratch).
func (t *fastTransport) roundTrip(req *http.Request, dl deadlines, raw *[]byte, sc *respScratch) (*http.Response, error) {
	key := req.URL.Host // folded where the try was aimed (reqState.point)
	ctx := req.Context()
	deadline, late := dl.head()
	if raw != nil {
		*raw = nil
	}
	// A kept connection the server has closed fails before a byte of the
	// response. A request never written goes again, on the next kept
	// connection: nothing of it reached the upstream. One written goes
	// again only if repeating it is safe (replayable), once, and on a
	// new connection: a kept one the upstream closed while idle is the
	// race keep-alive has, but an upstream that drops the request itself
	// (a crash on it) would otherwise run it once per kept connection.
	fresh := false
	var written error // the failure of the try that wrote, when fresh
	for {
		var c *fconn
		var reused bool
		var err error
		if fresh {
			c, err = t.dialConn(ctx, key, deadline, late)
			if err != nil {
				// The upstream had the request: its dropped connection is
				// the try's failure, not the resend's refused dial.
				return nil, resentFailure(written, err, true)
			}
		} else {
			c, reused, err = t.get(ctx, key, dl.now, deadline, late)
		}
		if err != nil {
			return nil, err
		}
		resp, err := t.send(ctx, c, req, deadline, dl.whole, raw, sc)
		if err == nil {
			return resp, nil
		}
		if !deadline.IsZero() && ctx.Err() == nil && errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("%w: %w", late, err)
		}
		var se *staleError
		if errors.As(err, &se) {
			if reused && ctx.Err() == nil && (se.unsent || replayable(req)) {
				fresh, written = !se.unsent, err
				continue
			}
			if !reused {
				err = se.err // a new connection: closed, not stale
			}
		}
		return nil, err
	}
}

// replayable reports whether a request written on a kept connection
// that failed before its answer may be written again on a new one: by
// http.Transport's rule (Request.isReplayable), GET, HEAD, OPTIONS and
// TRACE, or a request its client marked with an idempotency key. (The
// forwarder's own retries, which policy asks for, follow RFC 9110's
// idempotent methods: idempotent.)
func replayable(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return req.Header["Idempotency-Key"] != nil || req.Header["X-Idempotency-Key"] != nil
}

// max1xx bounds the informational responses before the final one, as
// http.Transport does.
const max1xx = 5

// staleError is the failure of a connection that answered nothing: on
// a kept one, the upstream closed it while it waited.
type staleError struct {
	err    error
	unsent bool // nothing of the request was written
}

func (e *staleError) Error() string {
	return "kept connection closed by the upstream: " + e.err.Error()
}
func (e *staleError) Unwrap() error { return e.err }

// send writes req on c and reads the response head, by deadline unless
// it is zero; whole (zero: none) then stays on c for the body, unless
// the body came with the head (the per-try deadline stays then: no read
// is left for it to bound). raw and sc are roundTrip's.
func (t *fastTransport) send(ctx context.Context, c *fconn, req *http.Request, deadline, whole time.Time, raw *[]byte, sc *respScratch) (*http.Response, error) {
	// Before the wake can be registered: never over it. A zero deadline
	// clears what an earlier request left.
	c.setDeadline(deadline)
	stop := afterEnd(ctx, c.wake)
	before := c.read
	// The head goes out with the first read of the answer (fconn.Read).
	c.out.Reset()
	// The body, if any, goes with the head (sendable): one write. A head
	// the fast writers leave to Request.Write (an odd host or target, a
	// field to sanitize) takes the body from sc.body: try read the
	// request's own.
	own := sc.lined && writeRequestLines(&c.out, req, sc)
	if !own {
		sc.unline(req.Header) // the head is the map's after all
		if req.ContentLength == int64(len(sc.body)) {
			c.fields, own = writeRequestHead(&c.out, req, c.fields, sc.trace)
		}
	}
	if own {
		c.out.Write(sc.body)
	} else {
		if sc.trace != nil {
			telemetry.SetFields(req.Header, sc.trace)
		}
		if sc.body != nil {
			// The request's own body was read into sc.body (try).
			held := *req
			held.Body, held.ContentLength = io.NopCloser(bytes.NewReader(sc.body)), int64(len(sc.body))
			req = &held
		}
		if err := req.Write(&c.out); err != nil {
			stop()
			c.Close()
			return nil, err
		}
	}
	var resp *http.Response
	var fr *fastResponse
	for n := 0; ; n++ {
		// The head starts with the bytes already in br (what follows a
		// 1xx head, or none): it may take MaxHeaderBytes, and a read
		// past them fails (fconn.Read), as http.Transport's does.
		c.limit = c.read - int64(c.br.Buffered()) + MaxHeaderBytes
		if _, err := c.br.Peek(1); err != nil {
			// As http.Transport fails on it (an io.EOF stays one): bufio
			// hands an error out once, a second read would see only EOF.
			c.limit = 0
			stop()
			c.Close()
			return nil, staleOr(err, c.read == before)
		}
		// The common head, read without net/http (wire.go); any other is
		// http.ReadResponse's.
		var lines []byte
		if fr, lines = readResponseHead(c.br, req, raw != nil, sc); fr != nil {
			c.limit = 0
			resp = &fr.Response
			if raw != nil {
				*raw = lines
			}
			break
		}
		var room [4]string
		head, _ := c.br.Peek(c.br.Buffered())
		listed, whole := closeListed(head, room[:0])
		if !whole {
			// The head goes on past what is buffered (larger than br, or
			// in several reads): its bytes kept as ReadResponse reads
			// them, at most MaxHeaderBytes (limit), since it deletes a
			// Connection field that lists close with the names beside it.
			c.tee = append(make([]byte, 0, 2*len(head)), head...)
		}
		r, err := http.ReadResponse(c.br, req)
		c.limit = 0
		if c.tee != nil {
			listed, _ = closeListed(c.tee, room[:0])
			c.tee = nil
		}
		if err != nil {
			stop()
			c.Close()
			return nil, staleOr(err, c.read == before)
		}
		for _, k := range listed {
			delete(r.Header, k) // hop-by-hop, as if Connection were there
		}
		if r.StatusCode >= 200 || r.StatusCode < 100 {
			// Final, as http.Transport takes it: only 100-199 are
			// informational (the forwarder refuses a status under 100).
			resp = r
			break
		}
		if r.StatusCode == http.StatusSwitchingProtocols || n == max1xx {
			// A protocol switch nobody asked for, or no end of 1xx.
			stop()
			c.Close()
			return nil, errors.New("unexpected " + r.Status + " from upstream")
		}
		// 103 Early Hints and the like: informational, passed on to the
		// app as http.Transport does, and the final answer follows.
		var got1xx func(int, textproto.MIMEHeader) error
		if tr := httptrace.ContextClientTrace(ctx); tr != nil && tr.Got1xxResponse != nil {
			got1xx = tr.Got1xxResponse
		} else if st, ok := ctx.Value(informKey{}).(*reqState); ok {
			got1xx = st.got1xx // fastProxy's request: no ClientTrace
		}
		if got1xx != nil {
			delete(r.Header, requestIDKey) // the app's ID is the sidecar's, in the final answer
			// Neither the ReverseProxy's hook nor fastProxy's drops the
			// hop-by-hop fields of a 1xx, which are this hop's as a final
			// answer's are (RFC 9110 §7.6.1).
			removeHopByHop(r.Header, nil)
			if err := got1xx(r.StatusCode, textproto.MIMEHeader(r.Header)); err != nil {
				stop()
				c.Close()
				return nil, err
			}
		}
	}
	woken := false
	if !deadline.IsZero() {
		// The head is in: the per-try timeout is over, the request's goes
		// on through the body, unless no read of it is left to bound (a
		// small body comes in the head's read).
		if !whole.Equal(deadline) && !bodyInBuffer(resp, fr, c.br) {
			c.setDeadline(whole)
		}
		if ctx.Err() != nil {
			// The context's end may have woken c before the line above:
			// woken again, and never kept, whatever stop says later (the
			// context runs its AfterFunc only after Err is set).
			c.wake()
			woken = true
		}
	}
	reusable := !woken && !resp.Close && resp.ProtoAtLeast(1, 1)
	if nobody.Is(resp.Body) || resp.ContentLength == 0 {
		t.release(c, stop, reusable)
		if !nobody.Is(resp.Body) {
			resp.Body.Close()
			resp.Body = http.NoBody
		}
		return resp, nil
	}
	if fr != nil {
		fr.lb = lengthBody{br: c.br, left: resp.ContentLength}
		fr.body = fastBody{ReadCloser: &fr.lb, t: t, c: c, stop: stop, reusable: reusable}
		resp.Body = &fr.body
		return resp, nil
	}
	resp.Body = &fastBody{ReadCloser: resp.Body, t: t, c: c, stop: stop, reusable: reusable}
	return resp, nil
}

// bodyInBuffer reports whether the body of resp, a response readResponseHead
// read (fr), needs no read of the connection: none, or all of it in br.
func bodyInBuffer(resp *http.Response, fr *fastResponse, br *bufio.Reader) bool {
	return nobody.Is(resp.Body) || fr != nil && resp.ContentLength >= 0 && int64(br.Buffered()) >= resp.ContentLength
}

// afterEnd is context.AfterFunc(ctx, f), without its allocations when
// ctx is the state of a request the lean loop serves (fastProxy's):
// leanhttp's AfterCancel calls f when the loop cancels the request's
// context. Only for the state itself: every context between it and the
// request's (tracing's values) ends when that one does, where one that
// a caller derived from it could end of its own (a timeout) unseen.
func afterEnd(ctx context.Context, f func()) (stop func() bool) {
	if st, ok := ctx.(*reqState); ok {
		if ac, ok := st.out.ResponseWriter.(afterCanceler); ok {
			return ac.AfterCancel(f)
		}
	}
	return context.AfterFunc(ctx, f)
}

// afterCanceler is leanhttp's response.
type afterCanceler interface {
	AfterCancel(f func()) (stop func() bool)
}

// staleOr marks an error on a connection that answered nothing.
func staleOr(err error, nothingRead bool) error {
	if nothingRead && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isConnReset(err)) {
		return &staleError{err: err}
	}
	return err
}

func isConnReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// release ends a request on c: kept for the next one if the response
// was read whole, the server allows it and the request's end did not
// wake c. A deadline left on it stays: an idle connection does no I/O,
// and the next request's send replaces it (setDeadline).
func (t *fastTransport) release(c *fconn, stop func() bool, reusable bool) {
	if !stop() || !reusable || c.br.Buffered() > 0 {
		c.Close()
		return
	}
	c.used = mono()
	t.mu.Lock()
	// retired is read under mu, which closeRetired takes after the flag
	// is set: c is either seen retired here or found in the pool there.
	if c.retired() {
		t.mu.Unlock()
		c.Close() // its endpoint left as it served this request
		return
	}
	l := t.list(c.key, true)
	if len(l.conns) >= t.maxIdle {
		t.mu.Unlock()
		c.Close()
		return
	}
	// At the cap of all keys, the connection kept longest goes, whatever
	// its key: refusing this one instead would leave the places to
	// connections of authorities called once, and a destination the app
	// calls all the time with none kept until they aged out (50 s).
	var evicted *fconn
	if t.kept >= t.maxTotal {
		evicted = t.evictOldest()
	}
	l.conns = append(l.conns, c)
	t.link(c)
	if t.sweeper == nil {
		t.sweeper = time.AfterFunc(idleTimeout, t.sweep)
	}
	t.mu.Unlock()
	if evicted != nil {
		t.evicted.Add(1)
		evicted.Close()
	}
}

// link adds c, just kept, at the newest end of the list of every kept
// connection; mu is held.
func (t *fastTransport) link(c *fconn) {
	c.older, c.newer = t.newest, nil
	if t.newest != nil {
		t.newest.newer = c
	} else {
		t.oldest = c
	}
	t.newest = c
	t.kept++
}

// unlink takes c, leaving its key's list, out of the list of every kept
// connection; mu is held.
func (t *fastTransport) unlink(c *fconn) {
	if c.older != nil {
		c.older.newer = c.newer
	} else {
		t.oldest = c.newer
	}
	if c.newer != nil {
		c.newer.older = c.older
	} else {
		t.newest = c.older
	}
	c.older, c.newer = nil, nil
	t.kept--
}

// evictOldest takes the connection kept longest out of the pool and
// returns it, to be closed; mu is held and the pool is not empty. Its
// key's list keeps connections in the order they were kept too (release
// appends, get takes the last), so it is that list's first: no search.
// A list it leaves empty is forgotten, unless it is the one used last
// (release is about to add to it).
func (t *fastTransport) evictOldest() *fconn {
	c := t.oldest
	t.unlink(c)
	l := t.idle[c.key]
	if len(l.conns) > 0 && l.conns[0] == c {
		l.conns[0] = nil
		l.conns = l.conns[1:]
	} else {
		// Not reached while both orders hold; kept correct if they did not.
		if i := slices.Index(l.conns, c); i >= 0 {
			l.conns = slices.Delete(l.conns, i, i+1)
		}
	}
	if len(l.conns) == 0 && l != t.last {
		delete(t.idle, c.key)
	}
	return c
}

// CloseIdleConnections closes every kept connection, the fallback
// transport's too.
func (t *fastTransport) CloseIdleConnections() {
	t.mu.Lock()
	var all []*fconn
	for _, l := range t.idle {
		all = append(all, l.conns...)
	}
	clear(t.idle)
	t.last = nil
	t.oldest, t.newest, t.kept = nil, nil, 0
	if t.sweeper != nil {
		t.sweeper.Stop()
		t.sweeper = nil
	}
	t.mu.Unlock()
	for _, c := range all {
		c.Close()
	}
	if c, ok := t.fallback.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// sweep closes kept connections unused for idleTimeout, those to hosts
// the app does not call again included, and forgets hosts with none left.
// It runs while any connection is kept, every idleTimeout/2 at most.
func (t *fastTransport) sweep() {
	now := mono()
	t.mu.Lock()
	stale := t.drop(func(c *fconn) bool { return now-c.used >= idleTimeout })
	if len(t.idle) > 0 {
		t.sweeper.Reset(idleTimeout / 2)
	} else {
		t.sweeper = nil
	}
	t.mu.Unlock()
	for _, c := range stale {
		c.Close()
	}
}

// closeRetired closes the kept connections whose endpoint has left
// every Service's endpoints (connPools.retire); those in use are closed
// as their request ends (release). It reports how many it closed.
func (t *fastTransport) closeRetired() int {
	t.mu.Lock()
	gone := t.drop((*fconn).retired)
	t.mu.Unlock()
	for _, c := range gone {
		c.Close()
	}
	return len(gone)
}

// drop moves the kept connections that gone says are to go out of
// t.idle, and returns them; mu is held.
func (t *fastTransport) drop(gone func(*fconn) bool) (stale []*fconn) {
	for key, l := range t.idle {
		keep := l.conns[:0]
		for _, c := range l.conns {
			if gone(c) {
				t.unlink(c)
				stale = append(stale, c)
			} else {
				keep = append(keep, c)
			}
		}
		clear(l.conns[len(keep):])
		l.conns = keep
		if len(keep) == 0 {
			delete(t.idle, key)
			if t.last == l {
				t.last = nil
			}
		}
	}
	return stale
}

// get takes a kept connection to key, or dials a new one. A kept one
// with anything to read is closed, not used, but that is send's to find
// (fconn.Read, rawio.Exchange): with no request on it, the upstream sent
// it unasked (a 408 before its idle close, bytes past a response's end)
// or closed it, and the next request would read that as its answer.
// http.Transport's read loop watches its idle connections so; this one
// looks once, as the request is written: the read before the write that
// must find nothing, and sends the request on another connection if not.
//
// now is the time to judge a kept connection's idleness by, on mono's
// clock (zero: get reads it).
func (t *fastTransport) get(ctx context.Context, key string, now time.Duration, deadline time.Time, late error) (*fconn, bool, error) {
	if now == 0 {
		now = mono()
	}
	for {
		t.mu.Lock()
		l := t.list(key, false)
		if l == nil || len(l.conns) == 0 {
			t.mu.Unlock()
			break
		}
		c := l.conns[len(l.conns)-1]
		l.conns[len(l.conns)-1] = nil
		l.conns = l.conns[:len(l.conns)-1]
		t.unlink(c)
		t.mu.Unlock()
		// A retired one was taken before closeRetired came to it: its
		// endpoint is gone, and a pod gone without a FIN would hold the
		// request until its timeout where a new dial fails at once.
		if now-c.used < idleTimeout && !c.retired() {
			return c, true, nil // and unasked bytes, if any, found by send (fconn.Read)
		}
		c.Close()
	}
	c, err := t.dialConn(ctx, key, deadline, late)
	return c, false, err
}

// dialConn is get's new connection, never one from the pool.
func (t *fastTransport) dialConn(ctx context.Context, key string, deadline time.Time, late error) (*fconn, error) {
	dctx := ctx
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		dctx, cancel = context.WithDeadlineCause(ctx, deadline, late)
		defer cancel()
	}
	nc, err := t.dial(dctx, "tcp", key)
	if err != nil {
		var se *selfError
		if ctx.Err() == nil && !errors.As(err, &se) && dialLate(err, dctx, deadline, late) {
			return nil, fmt.Errorf("%w: %w", late, err)
		}
		return nil, err
	}
	c := &fconn{Conn: nc, key: key}
	if k, ok := nc.(*keptConn); ok {
		c.Conn, c.kept = k.Conn, k
	}
	c.wake = c.unblock
	c.br = bufio.NewReaderSize(c, 4<<10)
	return c, nil
}

// dialLate reports whether a dial failed by its deadline: its context's
// cause says so, or the dialer saw the deadline pass before the context's
// timer ran, through the socket's own deadline (os.ErrDeadlineExceeded)
// or the context's (net's "i/o timeout", which is
// context.DeadlineExceeded): either was a connect failure to classify,
// retried and held against the breaker as one, before 2026-12-07
// (TestDialLateEitherTimeout). The dialer's connect timeout, earlier
// than the deadline, stays its own.
func dialLate(err error, dctx context.Context, deadline time.Time, late error) bool {
	if context.Cause(dctx) == late {
		return true
	}
	return !deadline.IsZero() && (errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)) &&
		!time.Now().Before(deadline)
}

// fastBody hands the connection back when the response body has been
// read to its end, and closes it when the body is abandoned midway.
type fastBody struct {
	io.ReadCloser
	t        *fastTransport
	c        *fconn
	stop     func() bool
	reusable bool
	done     bool
}

func (b *fastBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.done = true
		b.t.release(b.c, b.stop, b.reusable)
	}
	return n, err
}

func (b *fastBody) Close() error {
	if !b.done {
		b.done = true
		b.stop()
		b.c.Close()
	}
	return nil
}

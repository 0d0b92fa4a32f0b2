package outbound

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/minimesh/minimesh/internal/echo"
	"github.com/minimesh/minimesh/internal/netconn"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/breaker"
	"github.com/minimesh/minimesh/proxy/requestid"
	"github.com/minimesh/minimesh/proxy/retry"
	"github.com/minimesh/minimesh/wellknown"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/http/httpguts"
)

// serveConnect opens a CONNECT tunnel (HTTPS through HTTP_PROXY). The
// bytes inside are opaque, so the breaker sees only whether the
// connection could be made, and retries only connect failures. A tunnel
// to a Service whose endpoints the control plane sent goes to one of
// them, balanced and ejected as HTTP requests are (dialTunnel). A tunnel is
// counted as the opaque relay of a redirected connection is
// (minimesh_tcp_connections_total by result, and its bytes), never in
// minimesh_requests_total: its 200 says only that the connection was made,
// not how the requests inside it fared (docs/metrics.md, docs/grpc.md).
func (h *Handler) serveConnect(w http.ResponseWriter, r *http.Request, start time.Time) {
	authority := r.Host
	if _, _, err := net.SplitHostPort(authority); err != nil || len(authority) > maxAuthority {
		msg := "CONNECT needs host:port, got " + echo.Quote(authority)
		if err == nil {
			msg = "CONNECT " + checkAuthority(authority).Error()
		}
		id := requestid.New()
		w.Header().Set(wellknown.HeaderRequestID, id)
		writeError(w, http.StatusBadRequest, wellknown.ErrorBadRequest, errorBody{Message: msg, RequestID: id})
		return
	}
	// In flight from here, before its connection is hijacked (which takes
	// it out of the listener's drain) until its relay has ended: the
	// drain waits for it and closes it at its end, though its relay's
	// connections are not yet known.
	h.relays.Add()
	relaying := false
	defer func() {
		if !relaying {
			h.relays.Done()
		}
	}()
	dst := h.dests.get(authority)
	st := &reqState{dest: dst, authority: authority, code: http.StatusOK, start: start, attempts: 1}
	st.id = r.Header.Get(wellknown.HeaderRequestID)
	if !requestid.Valid(st.id) {
		st.id = requestid.New()
	}
	ctx := r.Context()
	if tr := h.cfg.Tracing; tr != nil {
		ctx, st.trace = tr.Begin(ctx, r.Header, http.MethodConnect, trace.SpanKindClient)
		if st.trace.Span != nil {
			st.trace.Span.SetAttributes(h.spanAttrs(r, st)...)
		}
	}
	if t := dst.policy.Spec.Timeout; t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, t, errTimeout)
		defer cancel()
	}
	// The dial ends with the request or the drain, whichever is first:
	// the app's connection is open until after the drain (its listener's
	// CloseAll), so the request's context alone would dial on past it.
	// A CONNECT's few allocations; a plain request makes none of them.
	ctx, cut := context.WithCancelCause(ctx)
	defer cut(nil)
	defer context.AfterFunc(h.dials, func() { cut(errShutdown) })()
	up, err := h.dialTunnel(ctx, dst, authority, st)
	st.headers = elapsed(st.start)
	if st.trace.Span != nil && st.ep != nil {
		// The endpoint dialled, as an HTTP try's span names it (tryAttrs).
		st.trace.Span.SetAttributes(appendPeer(nil, st.ep.Addr())...)
	}
	if err != nil {
		var body errorBody
		st.code, st.errKind, body = errorResponse(err, dst.name)
		if h.closing.Load() && (r.Context().Err() != nil || context.Cause(ctx) == errShutdown) {
			// Cut by the drain's end, not left by its app: recorded as a
			// request it cut is (finish), and closed unanswered as one is.
			st.code, st.errKind = http.StatusServiceUnavailable, tcpShutdown
			h.endTunnel(r, st, tcpShutdown)
			panic(http.ErrAbortHandler)
		}
		if r.Context().Err() != nil {
			// Gone: no answer at all, or net/http would send a 200 and the
			// tunnel's bytes would be read as requests.
			st.code, st.errKind = statusClientClosed, ""
			h.endTunnel(r, st, tcpReset)
			panic(http.ErrAbortHandler)
		}
		body.RequestID = st.id
		w.Header().Set(wellknown.HeaderRequestID, st.id)
		writeError(w, st.code, st.errKind, body)
		h.endTunnel(r, st, st.errKind)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		up.Close()
		st.connClosed()
		st.code = http.StatusInternalServerError
		http.Error(w, "connection cannot be hijacked", st.code)
		h.endTunnel(r, st, tcpReset)
		return
	}
	client, buf, err := hj.Hijack()
	if err != nil {
		up.Close()
		st.connClosed()
		st.code = statusClientClosed
		h.endTunnel(r, st, tcpReset)
		return
	}
	// The 200 goes past w, which is the server's own writer: serve hands
	// a CONNECT here before the request's state, and its held status
	// (countingWriter), exist. Nothing writes to w after the hijack, so
	// nothing is left to bypass (TestHijackedStatus).
	if _, err := client.Write([]byte("HTTP/1.1 200 Connection Established\r\n" + wellknown.HeaderRequestID + ": " + st.id + "\r\n\r\n")); err != nil {
		client.Close()
		up.Close()
		st.connClosed()
		st.code = statusClientClosed
		h.endTunnel(r, st, tcpReset)
		return
	}
	// The span covers making the tunnel (its bytes are opaque); the
	// metric and the access log line, written when it closes, its whole
	// life.
	h.endTunnelSpan(st)
	// Bytes the client sent right behind the CONNECT request (a TLS
	// ClientHello, say) are in the server's read buffer already.
	var early []byte
	if n := buf.Reader.Buffered(); n > 0 {
		early, _ = buf.Reader.Peek(n)
	}
	relaying = true
	go func() {
		defer h.relays.Done()
		sent, received, result := h.relayConn(client, early, up, dst)
		st.connClosed()
		st.in.n.Store(sent)
		st.out.n = received
		h.endTunnel(r, st, result)
	}()
}

// endTunnelSpan ends a tunnel's span, once.
func (h *Handler) endTunnelSpan(st *reqState) {
	if st.trace.Span != nil {
		endSpan(st.trace.Span, st.code, st.errKind, breakerState(st.dest))
		st.trace.Span = nil
	}
}

// endTunnel records a tunnel that ended with result, one of the results
// of minimesh_tcp_connections_total: its metric (as an opaque relay's,
// endTCP), its span if still open, and its access log line.
func (h *Handler) endTunnel(r *http.Request, st *reqState, result string) {
	st.dest.metrics.TCPConnection(result)
	h.endTunnelSpan(st)
	if result != tcpOK && st.errKind == "" && st.code != statusClientClosed {
		st.errKind = result
	}
	h.logAccess(r, st)
}

// dialTunnel connects the upstream of an opaque connection, a CONNECT
// tunnel or a redirected one (ServeTCP), through the breaker, retrying
// connect failures as the policy allows, and a dial an endpoint refused
// once on another whatever it says (elsewhere, as an HTTP request's;
// its breaker verdict held as theirs). addr is what the app named (the
// CONNECT's authority, the original destination). A destination that
// names a Service whose endpoints the control plane sent is balanced over
// them, as its HTTP requests are (st.pick, endTry): each try dials an
// endpoint, a retry one it has not tried, and the connect's outcome is
// the endpoint's, for its ejection and its latency estimate (the connect
// time, not the connection's life). The connection made stays in flight
// at its endpoint (Hold) until the caller's connClosed. Without endpoints
// it dials addr: kube-proxy picks the pod of a ClusterIP, DNS that of a
// name.
func (h *Handler) dialTunnel(ctx context.Context, dst *destination, addr string, st *reqState) (net.Conn, error) {
	r := dst.policy.Spec.Retries
	if r != nil && r.Attempts > 0 {
		dst.budget.Request(st.start)
	}
	retries := 0          // the policy's: not a refused dial's next pick (elsewhere)
	var held *heldVerdict // the try before's, refused by its endpoint
	var last error        // the try before's answer
	for attempt := 0; ; attempt++ {
		st.attempts = attempt + 1
		var done breaker.Done
		if dst.breaker != nil {
			d, err := held.allow(dst.breaker)
			if err != nil && last != nil {
				// A retry the breaker refuses (it opened in the backoff,
				// or another request's probe took the place the refused
				// probe yielded) is not dialled: the app gets the try
				// before's answer, its held verdict reported as it, as an
				// HTTP request's (RoundTrip). Before 2026-12-07 it got a
				// 503 circuit-open, and a refused probe's failure was heard
				// by no breaker (TestTunnelRefusedProbeRetryRefusedCounts).
				return nil, last
			}
			if err != nil {
				dst.metrics.Rejected()
				return nil, &circuitOpenError{destination: dst.name, retryAfter: dst.breaker.RetryAfter(time.Now())}
			}
			held.ignore() // the retry is dialled, judged instead (heldVerdict)
			done = d
		}
		to := addr
		ep, epTry := st.pick()
		if ep != nil {
			to = ep.Addr()
		}
		c, err := h.dialer.DialContext(ctx, "tcp", to)
		if err == nil {
			if ep != nil {
				ep.Hold() // before its try ends: never out of flight meanwhile
			}
			endTry(done, ep, epTry, nil)
			return c, nil
		}
		if ep != nil {
			err = endpointSelf(err) // the endpoint's fault, not the app's (dial.go)
		}
		if errors.As(err, new(*selfError)) || errors.As(err, new(*localError)) {
			endTry(done, ep, epTry, breaker.ErrIgnored)
			return nil, err
		}
		class, gone := classify(err, ctx, ctx)
		if gone {
			endTry(done, ep, epTry, breaker.ErrIgnored)
			return nil, err
		}
		outcome := error(nil)
		if dst.policy.Spec.CircuitBreaker.FailOn.Has(class) {
			outcome = breaker.ErrFailed
		}
		// An endpoint's refusal's verdict is held, as an HTTP try's
		// (try): a retry is judged instead.
		refused, _ := st.refusedBy(nil, err, class)
		held = endFailed(done, ep, epTry, outcome, refused, refused)
		ue := &upstreamError{class: class, err: err}
		last = ue
		free := attempt == retries && st.elsewhere(nil, err, class) // as an HTTP request's (forward.go)
		stop := dst.breaker != nil && dst.breaker.State() == breaker.Open
		if !free {
			stop = stop || r == nil || retries >= r.Attempts || !r.RetryOn.Has(class) || class != policy.ClassConnectFailure || !dst.budget.Withdraw()
		}
		if stop {
			held.report()
			return nil, ue
		}
		// A half-open probe's place is the next try's, which asks the
		// breaker (allow, above): yielded, not let go, so that the probe's
		// failure is still reported if the breaker refuses it after all.
		held.yield()
		dst.metrics.Retry("connect-failure")
		if free {
			continue
		}
		retries++
		if !backoffSleep(ctx, retry.Backoff(retries, r.Backoff.Base, r.Backoff.Max), time.Time{}) {
			held.ignore() // the connection ends as the wait did, not as this try
			return nil, ue
		}
	}
}

// connClosed records that the connection dialTunnel made is closed: no
// longer in flight at its endpoint (Hold).
func (st *reqState) connClosed() {
	if st.ep != nil {
		st.ep.Release()
		st.ep = nil
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		_ = c.Close()
	}
}

// tunnels tracks open tunnels: http.Server.Shutdown does not see hijacked
// connections, so draining must wait for them itself.
type tunnels struct {
	mu     sync.Mutex
	conns  map[net.Conn]net.Conn
	closed bool // the drain closed those left: no more
}

// add tracks a tunnel or relay. False when the drain has closed those
// left already (one whose dial ended after that): the caller ends it.
func (t *tunnels) add(client, up net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if t.conns == nil {
		t.conns = map[net.Conn]net.Conn{}
	}
	t.conns[client] = up
	return true
}

func (t *tunnels) remove(client, up net.Conn) {
	t.mu.Lock()
	delete(t.conns, client)
	t.mu.Unlock()
}

// Drain waits until the tunnels and opaque relays in flight and the
// upgraded connections end or ctx is done, then closes the tunnels and
// relays left; upgraded connections left are closed with their listener's
// connections (connlimit.Listener.CloseAll). A tunnel or relay counts from
// its start (a CONNECT from its request, a redirected connection from
// ServeTCP), not from when its connections are known: one still dialling,
// or whose 200 is on its way, when the drain begins is waited for too, and
// closed at its end.
func (h *Handler) Drain(ctx context.Context) {
	select {
	case <-h.relays.Idle():
		select {
		case <-h.upgrades.Idle():
		case <-ctx.Done():
		}
	case <-ctx.Done():
	}
	if ctx.Err() == nil {
		return
	}
	// The drain's time is up: what is closed from now on was cut by it,
	// not by its app (a relay's result "shutdown"; finish: 503 shutdown,
	// not 499).
	h.closing.Store(true)
	if h.endDials != nil {
		// After closing: a dial cut here is recorded as the drain's.
		h.endDials(errShutdown)
	}
	t := &h.tunnels
	t.mu.Lock()
	t.closed = true
	for c, up := range t.conns {
		c.Close()
		up.Close()
	}
	t.mu.Unlock()
	// The relays closed above, and those whose dial was cancelled, end at
	// once; their metric and log line follow (bounded, for a relay slow
	// to notice).
	select {
	case <-h.relays.Idle():
	case <-time.After(relayLogGrace):
	}
}

// relayLogGrace bounds the drain's wait for the relays it closed.
const relayLogGrace = time.Second

// errShutdown is the cause of the dials' context (Handler.dials) once the
// drain's time is up.
var errShutdown = errors.New("the drain ended (--drain-timeout)")

// Hijack hands the ReverseProxy the app's connection for an upgrade's
// splice (its handleUpgradeResponse, reached through ResponseController),
// with the bytes the app sent behind the request's head first: Go's
// ReverseProxy copies from the bare connection and drops what the server
// had read ahead into its buffer (golang/go#80875), so a client that
// pipelines its first frames with the handshake lost them. Those bytes
// stay unread, and unsent, until the upstream answers: they go only after
// a 101, as the tunnel's first bytes; after any other answer the
// connection closes with them unread (the handler's closeConn for an
// upgrade), never parsed as a further request (docs/operations.md,
// "Upgrade requests"). The ReverseProxy writes the 101 itself on the
// connection taken: the held status is bypassed, or the handler's Commit
// would write a 200 on a hijacked connection (net/http logs
// "response.WriteHeader on hijacked connection"), as inbound's Hijack.
func (w *countingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := HijackEarly(w.ResponseWriter)
	if err == nil {
		w.Bypassed()
	}
	return c, brw, err
}

// HijackEarly hijacks w's connection (w the server's own ResponseWriter,
// or one that unwraps to it) and returns it reading first the bytes the
// server had buffered past the request, which the returned ReadWriter no
// longer holds: for a caller, such as the ReverseProxy, that reads the
// connection and not the ReadWriter. The inbound listener's upgrades use
// it too.
func HijackEarly(w http.ResponseWriter) (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil || brw == nil || brw.Reader.Buffered() == 0 {
		return c, brw, err
	}
	early := make([]byte, brw.Reader.Buffered())
	if _, err := io.ReadFull(brw.Reader, early); err != nil { // buffered: no read of the socket
		c.Close()
		return nil, nil, fmt.Errorf("hijack: taking the bytes read ahead: %w", err)
	}
	return &earlyConn{Conn: c, early: early}, brw, nil
}

// earlyConn is a hijacked connection whose first reads return early, the
// bytes its server had read ahead.
type earlyConn struct {
	net.Conn
	early []byte
}

func (c *earlyConn) Read(p []byte) (int, error) {
	if len(c.early) > 0 {
		n := copy(p, c.early)
		c.early = c.early[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite passes the upstream's end of the stream on (the relay, and
// the ReverseProxy's copy, look for it on the connection they were given).
func (c *earlyConn) CloseWrite() error { return netconn.CloseWrite(c.Conn) }

// Unwrap gives abort (a reset passed on) and rawio the connection.
func (c *earlyConn) Unwrap() net.Conn { return c.Conn }

// switchedAsAsked reports whether resp, a 101, switches req's connection
// to the protocol req asked for, as the ReverseProxy checks before it
// splices. Its own refusal (a 502) leaves the switched connection open
// for good (golang/go#80875), so the forwarder refuses such a 101 first,
// closing it, as the upstream's failure: the app's connection closes too
// (an upgrade's answer other than its 101), its early bytes unsent.
func switchedAsAsked(req *http.Request, resp *http.Response) bool {
	asked, got := upgradeType(req.Header), upgradeType(resp.Header)
	if asked == "" || !strings.EqualFold(asked, got) {
		return false
	}
	for i := 0; i < len(got); i++ {
		if got[i] < ' ' || got[i] > '~' {
			return false
		}
	}
	return true
}

// upgradeType is the protocol h's Upgrade names, when its Connection
// names Upgrade (net/http/httputil's reading).
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

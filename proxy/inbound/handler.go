// Package inbound is the sidecar's inbound listener (--inbound-addr): the
// connections into the pod that iptables redirected to it under
// capture-inbound (docs/interception.md, "Inbound"). Each is forwarded to
// the app at its original destination, the pod's own address and port.
//
// The listener tells redirected connections from others and detects their
// protocol exactly as the outbound listener does (proxy/transparent).
// HTTP/1.x requests get the server side's telemetry: metrics with
// direction="inbound", a SERVER span continuing the caller's trace, the
// request ID kept or made, an access log line. Everything else is relayed
// as opaque TCP with the outbound path's relay. There is no breaker, no
// retry and no timeout: resilience policy is the caller's.
package inbound

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/internal/rawio"
	"github.com/minimesh/minimesh/internal/replayguard"
	"github.com/minimesh/minimesh/proxy/internal/heldstatus"
	"github.com/minimesh/minimesh/proxy/internal/inflight"
	"github.com/minimesh/minimesh/proxy/internal/nobody"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/requestid"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/proxy/transparent"
	"github.com/minimesh/minimesh/wellknown"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Config configures the inbound path.
type Config struct {
	// ServiceName names the app in access logs.
	ServiceName string
	Metrics     *telemetry.Metrics
	// Tracing makes SERVER spans; nil: no tracing.
	Tracing *telemetry.Tracing
	// AccessLog gets a line per request and per opaque connection; nil:
	// none.
	AccessLog *telemetry.AccessLog
	Logger    *slog.Logger
	// OwnPorts are the sidecar's own ports (outbound, inbound, admin): a
	// connection whose original destination is one of them is refused.
	OwnPorts []uint16
	// LocalAddr reports whether an original destination is one of the
	// pod's own addresses; a redirected connection to any other is
	// refused (see localAddrs). nil: the host's interface addresses,
	// loopback excluded. Tests on loopback set their own.
	LocalAddr func(netip.Addr) bool
	// ConnectTimeout bounds connecting to the app (0: 5 s).
	ConnectTimeout time.Duration
	// TCPIdleTimeout closes an opaque relay or an upgraded connection
	// idle this long (0: outbound.DefaultTCPIdleTimeout).
	TCPIdleTimeout time.Duration
	// MaxIdleConnsPerHost is how many kept-alive connections to one app
	// port wait for reuse (0: 256).
	MaxIdleConnsPerHost int
	// RequestBodyTimeout bounds the caller's pause in a request body
	// while the app waits for it (0: outbound.DefaultRequestBodyTimeout;
	// negative: none), and NoDataIdleTimeout a no-data connection on
	// which neither side has sent a byte (0: DefaultNoDataIdleTimeout):
	// limits.go. ConnState, the listener's (connlimit), is told when a
	// no-data relay waits and when its first byte moves (NewServer sets
	// it).
	RequestBodyTimeout time.Duration
	NoDataIdleTimeout  time.Duration
	ConnState          func(net.Conn, http.ConnState)
}

// Results of minimesh_tcp_connections_total{direction="inbound"} and the
// X-Minimesh-Error of the inbound path's own answers.
const (
	resultForbidden = wellknown.ErrorForbidden      // the original destination is the sidecar's own port, not the pod's address, or none
	resultConnect   = wellknown.ErrorConnectFailure // the app refused, or did not answer in ConnectTimeout
)

// statusClientClosed is recorded (never sent) when the caller went away
// before the response, as on the outbound path.
const statusClientClosed = 499

// Handler forwards redirected inbound connections to the app: HTTP/1.x
// requests (ServeHTTP, on connections whose context WithOriginalDst set)
// and opaque TCP (ServeTCP).
type Handler struct {
	cfg Config
	log *slog.Logger
	rp  *httputil.ReverseProxy
	tr  *http.Transport
	d   net.Dialer

	draining atomic.Bool
	closing  atomic.Bool
	// relays (ServeTCP calls) and upgrades (upgraded WebSocket requests)
	// in flight; they may start while the drain waits (inflight).
	relays   inflight.Counter
	upgrades inflight.Counter

	mu    sync.Mutex
	conns map[net.Conn]net.Conn // opaque relays: the caller's connection and the app's

	// foreignLogged is when a refused foreign destination was last
	// logged (UnixNano), foreignQuiet how many were refused since
	// without a line: a scan must not flood the log.
	foreignLogged atomic.Int64
	foreignQuiet  atomic.Int64

	// reached has a bit per port on which a connection to the app has
	// succeeded: only those ports get a label of their own (portMetric).
	reached [1 << 16 / 64]atomic.Uint64
}

// New returns the inbound handler.
func New(cfg Config) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = telemetry.New(0)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.MaxIdleConnsPerHost <= 0 {
		cfg.MaxIdleConnsPerHost = 256
	}
	if cfg.LocalAddr == nil {
		cfg.LocalAddr = newLocalAddrs().has
	}
	h := &Handler{cfg: cfg, log: cfg.Logger, conns: map[net.Conn]net.Conn{}}
	h.d = net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second, ControlContext: h.control}
	h.tr = &http.Transport{
		Proxy:                  nil,
		DialContext:            h.dial,
		MaxIdleConns:           0,
		MaxIdleConnsPerHost:    cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:        90 * time.Second,
		DisableCompression:     true, // bodies and Accept-Encoding pass through untouched
		MaxResponseHeaderBytes: outbound.MaxHeaderBytes,
		ExpectContinueTimeout:  time.Second,
	}
	h.rp = &httputil.ReverseProxy{
		Rewrite:        h.rewrite,
		Transport:      outbound.AppTransport(h.tr), // the outbound path's 1xx bound, and no app's X-Request-ID in 1xx or trailers
		BufferPool:     bufferPool{},
		ErrorHandler:   h.serveError,
		ModifyResponse: h.modifyResponse,
		ErrorLog:       slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
	}
	return h
}

// SetDraining turns on "Connection: close" on every answer.
func (h *Handler) SetDraining(v bool) { h.draining.Store(v) }

// CloseIdleConnections closes the kept connections to the app.
func (h *Handler) CloseIdleConnections() { h.tr.CloseIdleConnections() }

// own reports whether ap is one of the sidecar's own ports: a connection
// meant for the sidecar itself, which the rules never redirect, so one
// that arrives redirected is refused rather than forwarded to it.
func (h *Handler) own(ap netip.AddrPort) bool { return slices.Contains(h.cfg.OwnPorts, ap.Port()) }

// foreign reports whether ap is not addressed to the pod: another host's
// address that reached the listener because someone routed it through the
// pod (or loopback). Relaying it would make the pod an open relay; the
// rules return such packets before the REDIRECT (docs/interception.md),
// and this is the check for rules written by someone else.
func (h *Handler) foreign(ap netip.AddrPort) bool { return !h.cfg.LocalAddr(ap.Addr()) }

// refused reports whether a redirected connection to ap is refused
// (reset, counted forbidden) rather than forwarded, and logs why.
func (h *Handler) refused(ap netip.AddrPort, client net.Addr) bool {
	switch {
	case h.own(ap):
		h.log.Debug("inbound connection to the sidecar's own port refused", "original_dst", ap.String(), "client", client.String())
	case h.foreign(ap):
		h.logForeign(ap, client)
	default:
		return false
	}
	return true
}

// foreignLogEvery is the least time between two log lines of refused
// foreign destinations.
const foreignLogEvery = time.Second

// logForeign logs a refused foreign destination at most once per
// foreignLogEvery, with how many went unlogged since the last line.
func (h *Handler) logForeign(ap netip.AddrPort, client net.Addr) {
	now := time.Now().UnixNano()
	last := h.foreignLogged.Load()
	if now-last < int64(foreignLogEvery) || !h.foreignLogged.CompareAndSwap(last, now) {
		h.foreignQuiet.Add(1)
		return
	}
	h.log.Warn("inbound connection refused: its original destination is not one of the pod's addresses (routed through the pod to another host)",
		"original_dst", ap.String(), "client", client.String(), "refused_unlogged", h.foreignQuiet.Swap(0))
}

// forbiddenMetric is the metric handles a refused connection to ap counts
// in: its port's once labelled (portMetric), or for a foreign destination
// the shared "other" (a scan of another host's ports must not take the
// pod's own port labels).
func (h *Handler) forbiddenMetric(ap netip.AddrPort) *telemetry.Destination {
	if !h.own(ap) && h.foreign(ap) {
		return h.cfg.Metrics.Inbound(telemetry.Other)
	}
	return h.portMetric(ap.Port())
}

// The inbound labels (telemetry.MaxInbound of them) are given first come,
// first served, for the life of the process. Before 2026-12-06 any
// connection took one: 64 connections to closed ports (a scan) took them
// all, and the app's real port was "other" from then on. A port gets its
// label once a connection to the app on it has succeeded; until then its
// connect failures and refusals count under "other".

// portReached reports whether a connection to the app on port has
// succeeded.
func (h *Handler) portReached(port uint16) bool {
	return h.reached[port/64].Load()&(1<<(port%64)) != 0
}

// portMetric is the metric handles of port: its own once reached, else
// the shared "other".
func (h *Handler) portMetric(port uint16) *telemetry.Destination {
	if h.portReached(port) {
		return h.cfg.Metrics.Inbound(strconv.Itoa(int(port)))
	}
	return h.cfg.Metrics.Inbound(telemetry.Other)
}

// markReached records that a connection to the app on port succeeded:
// once per connection to the app, not per request.
func (h *Handler) markReached(port uint16) {
	if !h.portReached(port) {
		h.reached[port/64].Or(1 << (port % 64))
	}
}

// connMetric is the metric handles of c's requests (portMetric).
func (h *Handler) connMetric(c *conn) *telemetry.Destination {
	if c.metric != nil {
		return c.metric
	}
	if h.portReached(c.addr.Port()) {
		c.metric = h.cfg.Metrics.Inbound(c.port)
		return c.metric
	}
	return h.cfg.Metrics.Inbound(telemetry.Other)
}

// control refuses, where names have become addresses, a connection to
// one of the sidecar's own ports, or to an address not the pod's: nothing
// reaches them through the sidecar, whatever the original destination says.
func (h *Handler) control(_ context.Context, _, address string, _ syscall.RawConn) error {
	if ap, err := netip.ParseAddrPort(address); err == nil {
		if h.own(ap) {
			return errOwnPort
		}
		if h.foreign(ap) {
			return errForeign
		}
	}
	return nil
}

var (
	errOwnPort = errors.New("the original destination is one of the sidecar's own ports")
	errForeign = errors.New("the original destination is not one of the pod's addresses")
)

// dialError marks a failure to connect to the app.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func (h *Handler) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := h.d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, &dialError{err}
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		h.markReached(ap.Port()) // portMetric
	}
	return replayguard.Count(rawio.Wrap(c)), nil // its writes counted for replayGuard
}

// conn is what the inbound path knows of a redirected connection, once:
// its original destination and the metric handles of its port.
type conn struct {
	// refused: the sidecar's own port, or not the pod's address (found
	// once per connection); its requests are never forwarded.
	refused bool
	addr    netip.AddrPort
	text    string // addr.String()
	port    string
	// metric: the port's handles, nil until the port is reached
	// (connMetric). Only the connection's goroutine uses it: HTTP/1
	// requests on one connection come one after the other.
	metric *telemetry.Destination
	caller net.Conn // the caller's connection, to tell an eviction (limits.go); nil: unknown
}

type connKey struct{}

// WithOriginalDst returns ctx carrying the original destination of a
// redirected connection, for ServeHTTP: an http.Server's ConnContext, once
// per connection (the port's metric handles are found here, not per
// request).
func (h *Handler) WithOriginalDst(ctx context.Context, addr netip.AddrPort) context.Context {
	return h.withConn(ctx, addr, nil)
}

// withConn is WithOriginalDst with the caller's connection (nil:
// unknown), kept to tell an eviction (limits.go).
func (h *Handler) withConn(ctx context.Context, addr netip.AddrPort, caller net.Conn) context.Context {
	port := strconv.Itoa(int(addr.Port()))
	c := &conn{refused: h.own(addr) || h.foreign(addr), addr: addr, text: addr.String(), port: port, caller: caller}
	if !c.refused && h.portReached(addr.Port()) {
		c.metric = h.cfg.Metrics.Inbound(port)
	}
	return context.WithValue(ctx, connKey{}, c)
}

// reqState follows one request through the ReverseProxy.
type reqState struct {
	c       *conn
	id      string
	code    int
	errKind string
	start   time.Time
	headers time.Time // when the response headers were ready
	trace   telemetry.Place
	// late: the app's response body failed after its headers, with
	// this error (for the 502's message: answerLate); nil: it did not.
	late error
	in   countingBody
	out  countingWriter

	// guard keeps the transport from writing the request twice.
	guard replayGuard
}

type stateKey struct{}

// ServeHTTP forwards one request into the app, at the connection's
// original destination, with the Host header the caller sent.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c, _ := r.Context().Value(connKey{}).(*conn)
	if c == nil || c.refused {
		// Not a redirected connection (the server was wired wrong), or
		// one meant for the sidecar itself or for another host: never
		// forwarded.
		panic(http.ErrAbortHandler)
	}
	// closeConn: the final answer says Connection: close. Set as the
	// status goes (heldstatus.Writer.Commit), not in the header map now: the
	// ReverseProxy clears the map after each 1xx it passes on, and a 103
	// from the app took the close off a chunked request's answer (the
	// request pipelined behind it was served).
	closeConn := false
	if r.Header.Get("Upgrade") != "" {
		// An h2c upgrade goes into the app as a plain request, on a kept
		// connection, as on the outbound path (docs/operations.md,
		// "Upgrade requests"); one spelled otherwise than "h2c" alone
		// closes it: the guard no longer follows it.
		if up, h2cOnly := outbound.DropH2CUpgrade(r.Header); !up && !h2cOnly {
			closeConn = true
		}
	}
	if (h.draining.Load() || len(r.TransferEncoding) > 0) && r.Header.Get("Upgrade") == "" {
		// Not on an upgrade's answer: a 101 must say Connection: Upgrade.
		// A chunked request closes its connection after the response,
		// as on the outbound path: RFC 9112 §6.1 asks it of a request
		// with both Content-Length and Transfer-Encoding (a smuggling
		// attempt through a proxy in front of the pod), and Go's server
		// drops the Content-Length before the handler could tell.
		closeConn = true
	}
	st := &reqState{c: c, start: start, code: http.StatusBadGateway}
	st.out.ResponseWriter, st.out.CloseConn = w, closeConn
	if r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		// An HTTP/1.0 caller may get no 1xx (RFC 9110 §15.2): it reads one
		// as the final answer. Its 100-continue expectation is to be
		// ignored (RFC 9110 §10.1.1), so the app is not asked for a 100
		// nobody may pass on.
		st.out.HTTP10 = true
		delete(r.Header, "Expect")
	}
	w = &st.out
	st.id = r.Header.Get(wellknown.HeaderRequestID)
	if !requestid.Valid(st.id) {
		st.id = requestid.New()
		r.Header.Set(wellknown.HeaderRequestID, st.id)
	} else if len(r.Header.Values(wellknown.HeaderRequestID)) > 1 {
		r.Header.Set(wellknown.HeaderRequestID, st.id) // one ID, the one the caller gets back
	}
	if r.Body != nil && !nobody.Is(r.Body) {
		st.in.ReadCloser = r.Body
		r.Body = &st.in
		if stop := h.watchBody(st); stop != nil {
			defer stop()
		}
		// Full duplex, as outbound: otherwise net/http's server, about to
		// write the app's head, drains the body the transport is still
		// reading, and first waits for its lock, held by the transport's
		// read of a caller that may have paused: an early answer (a 401
		// to an upload) stayed in the server's buffer until the caller
		// sent more. What is left of the body when the answer ends is
		// abandon's.
		if fd, ok := st.out.ResponseWriter.(interface{ EnableFullDuplex() error }); ok {
			_ = fd.EnableFullDuplex()
		}
	}
	ctx := context.WithValue(r.Context(), stateKey{}, st)
	if tr := h.cfg.Tracing; tr != nil {
		ctx, st.trace = tr.Begin(ctx, r.Header, telemetry.SpanName(r.Method), trace.SpanKindServer)
		if st.trace.Span != nil {
			st.trace.Span.SetAttributes(spanAttrs(r, st)...)
		}
	}
	defer h.finish(r, st)
	if st.in.ReadCloser != nil {
		// Deferred after finish, so run before it: also on the
		// ReverseProxy's abort of a response cut short.
		defer h.endUpload(st)
	}
	if r.Method == http.MethodConnect || r.URL.Scheme != "" || r.URL.Host != "" || r.URL.Opaque != "" {
		// A proxy's request on a connection that began as plain HTTP: the
		// app is no proxy here (a first request of this kind is relayed
		// as opaque TCP, like any protocol the sidecar does not speak).
		st.code, st.errKind, st.headers = http.StatusBadRequest, wellknown.ErrorBadRequest, time.Now()
		w.Header().Set("Connection", "close")
		h.writeError(w, st, http.StatusBadRequest, wellknown.ErrorBadRequest,
			"request target "+strconv.Quote(r.RequestURI)+" on an inbound connection: the app gets origin-form requests")
		return
	}
	if r.Header.Get("Upgrade") != "" {
		h.upgrades.Add()
		defer h.upgrades.Done()
		// Any answer but a 101 closes the connection: what the caller
		// sent behind the head is the protocol it asked for, never a
		// next request into the app (docs/interception.md, "Inbound").
		st.out.upgrade, st.out.CloseConn = true, true
	}
	if gctx, cancel := st.guard.guard(ctx, r); cancel != nil {
		ctx = gctx
		defer cancel(nil)
	}
	r = r.WithContext(ctx)
	h.rp.ServeHTTP(w, r)
	if st.late != nil && st.out.Withheld() {
		h.answerLate(w, r, st)
	}
	if st.code == statusClientClosed && !st.out.Sent() {
		panic(http.ErrAbortHandler) // the caller went away: nothing to answer; finish records the 499
	}
	st.out.Commit() // a status with no body (a 204, a 304, an empty 200)
}

// answerLate replaces an app's response that failed after its head but
// before any of its body reached the caller (lateBody withheld its
// status) with the sidecar's 502, through serveError.
func (h *Handler) answerLate(w http.ResponseWriter, r *http.Request, st *reqState) {
	clear(w.Header()) // the app's fields, copied by the ReverseProxy
	st.out.Rehold()
	err := &lateError{st.late}
	st.late = nil
	h.serveError(w, r, err)
}

// lateError is an app's response that failed after its head, before any
// of its body.
type lateError struct{ err error }

func (e *lateError) Error() string { return e.err.Error() }
func (e *lateError) Unwrap() error { return e.err }

// endUpload ends the caller's request body when the exchange is over
// before it (countingBody.abandon): an app that answered without reading
// it all, a failure. Not after a 101: the connection is the relay's.
func (h *Handler) endUpload(st *reqState) {
	if st.code != http.StatusSwitchingProtocols {
		st.in.abandon(st.out.ResponseWriter)
	}
}

// rewrite points the request at the app: the connection's original
// destination, with the caller's Host header, path and query as sent.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(stateKey{}).(*reqState)
	if st.out.upgrade {
		// Its 101's connection is relayed by the handler (relayUpgrade).
		pr.Out = pr.Out.WithContext(outbound.TraceUpstreamConn(pr.Out.Context()))
	}
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = st.c.text
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
	// ReverseProxy drops these before Rewrite, as a gateway would; the
	// sidecar passes the caller's own on unchanged and adds none.
	for _, k := range forwardedHeaders {
		if v, ok := pr.In.Header[k]; ok {
			pr.Out.Header[k] = v
		}
	}
	// The app always gets the request ID, even one the caller named as a
	// hop-by-hop field (Connection: X-Request-ID).
	pr.Out.Header[requestIDKey] = []string{st.id}
	if tr := h.cfg.Tracing; tr != nil {
		// The app's own server span hangs under the sidecar's.
		tr.Inject(pr.Out.Context(), st.trace, pr.Out.Header)
	}
}

// requestIDKey is X-Request-ID as a Header's map holds it.
var requestIDKey = http.CanonicalHeaderKey(wellknown.HeaderRequestID)

var forwardedHeaders = [...]string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

func (h *Handler) modifyResponse(resp *http.Response) error {
	if resp.StatusCode < 100 {
		// http.ReadResponse reads any three digits; a status under 100 is
		// no HTTP answer, and WriteHeader would panic on it.
		return &badStatusError{resp.StatusCode}
	}
	st := resp.Request.Context().Value(stateKey{}).(*reqState)
	st.code, st.headers = resp.StatusCode, time.Now()
	outbound.NoSniff(resp.Header, st.out.Header())
	answeredBody(st)
	resp.Header.Set(wellknown.HeaderRequestID, st.id)
	if resp.StatusCode != http.StatusSwitchingProtocols && resp.Body != nil && !nobody.Is(resp.Body) {
		resp.Body = &lateBody{ReadCloser: resp.Body, st: st, req: resp.Request.Context(), length: resp.ContentLength}
	}
	// The app closing its connection (Connection: close, as a Go server
	// does once it is shutting down) is passed on to the caller: its
	// connection ends at this sidecar, and would otherwise stay with a pod
	// whose app is going away after the endpoints have forgotten it.
	if resp.StatusCode != http.StatusSwitchingProtocols && (h.draining.Load() || resp.Close) {
		resp.Header.Set("Connection", "close")
	}
	if resp.StatusCode == http.StatusSwitchingProtocols && st.out.upgrade {
		if up := outbound.UpstreamConn(resp); up != nil {
			h.relayUpgrade(st, resp, up)
			return errUpgraded // the ReverseProxy's splice would drop how it ended
		}
	}
	return nil
}

// errUpgraded tells serveError that relayUpgrade relayed and recorded an
// upgraded connection: nothing to answer.
var errUpgraded = errors.New("inbound: upgraded connection relayed")

// relayUpgrade passes the app's 101 on to the caller and relays the
// switched connection with the outbound path's (outbound.RelayUpgraded:
// a reset passed on as a reset, the relays' idle limit), and records how
// it ended, as outbound: its bytes both ways, its result in
// minimesh_tcp_connections_total{direction="inbound"} and, when not ok,
// the access log's and the span's error; the app's reset is a failure
// after the 101 (the metric's 502), the caller's its leaving (499).
func (h *Handler) relayUpgrade(st *reqState, resp *http.Response, up net.Conn) {
	st.out.Bypassed() // the 101, written by RelayUpgraded
	m := h.connMetric(st.c)
	u, err := outbound.RelayUpgraded(st.out.ResponseWriter, resp, up, m.TCP(), h.cfg.TCPIdleTimeout)
	if err != nil {
		outbound.Abort(up)
		st.code = statusClientClosed
		m.TCPConnection(evictedResult(st.c.caller, outbound.RelayReset))
		return
	}
	st.in.n.Add(u.Sent)
	st.out.n += u.Received
	result := evictedResult(st.c.caller, u.Result) // the cap closed it (limits.go)
	if result == outbound.RelayReset && h.closing.Load() {
		result = outbound.RelayShutdown // the end of the drain closed it
	}
	m.TCPConnection(result)
	switch {
	case result == outbound.RelayReset && u.ClientFailed:
		st.code = statusClientClosed
	case result != outbound.RelayOK:
		st.errKind = result
	}
}

// lateBody notes an app's response body that fails after its headers
// (the app crashed, reset, or sent less than it announced), for finish:
// the failure it is, not the app's status. A read that fails because the
// caller went away is the caller's: 499.
type lateBody struct {
	io.ReadCloser
	st     *reqState
	req    context.Context
	length int64 // the response's Content-Length; -1: a stream
}

func (b *lateBody) Read(p []byte) (int, error) {
	if w := &b.st.out; 0 < w.n && w.n < b.length {
		// What the caller was given of a body still arriving goes to it
		// before this read waits for the rest, as outbound
		// (upstreamBody.sendArrived): held, the status and the first
		// bytes sat in the server's 4 KiB buffer until the body ended. A
		// body read whole with its head comes in one read (EOF with its
		// last byte): no flush. A stream is flushed on every write by
		// the ReverseProxy.
		_ = w.FlushError()
	}
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		if b.req.Err() != nil {
			b.st.out.gone = true
			return n, err
		}
		b.st.late = err
		if b.st.out.Withhold() {
			// Nothing of the body reached the caller, nor the status (no
			// flush of a stream's head came first): ServeHTTP answers 502
			// (answerLate).
			return 0, io.EOF
		}
	}
	return n, err
}

// badStatusError is an app's answer with a status under 100.
type badStatusError struct{ code int }

func (e *badStatusError) Error() string {
	return fmt.Sprintf("malformed HTTP status code %03d", e.code)
}

// serveError answers a request the app could not be reached for.
func (h *Handler) serveError(w http.ResponseWriter, r *http.Request, err error) {
	if err == errUpgraded {
		return // relayed and recorded (relayUpgrade)
	}
	st := r.Context().Value(stateKey{}).(*reqState)
	gone := errors.Is(err, context.Canceled) && r.Context().Err() != nil
	bodyErr := st.in.failure()
	if errors.Is(bodyErr, errBodyIdle) {
		gone = false // the watch's cut read cancelled the request: 408 (watchBody)
	}
	if gone || bodyErr != nil && outbound.SenderGone(bodyErr) {
		// The caller went away, perhaps in the middle of its request body
		// (which the transport may report before the server cancels the
		// request): its failure, not the app's.
		st.code, st.headers = statusClientClosed, time.Now()
		return // nobody is listening
	}
	code, kind, msg := http.StatusBadGateway, wellknown.ErrorReset, "the app at "+st.c.text+" closed the connection before its response: "+err.Error()
	if bodyErr != nil {
		// A request body the server could not read (bad chunked framing):
		// the caller's fault, as on the outbound path.
		code, kind, msg = http.StatusBadRequest, wellknown.ErrorBadRequest, "the request body could not be read: "+bodyErr.Error()
		if errors.Is(bodyErr, errBodyIdle) {
			code, msg = http.StatusRequestTimeout, bodyErr.Error() // as outbound's 408 (watchBody)
		}
	}
	var de *dialError
	var bs *badStatusError
	var le *lateError
	switch {
	case bodyErr != nil:
	case errors.As(err, &le):
		msg = "the app at " + st.c.text + "'s response failed after its headers, before any of its body reached the caller: " + le.err.Error()
	case errors.As(err, &bs):
		msg = "the app at " + st.c.text + " answered with a " + bs.Error()
	case errors.Is(err, errOwnPort):
		code, kind, msg = http.StatusForbidden, wellknown.ErrorForbidden, st.c.text+" is one of the sidecar's own ports: nothing reaches them through it"
	case errors.As(err, &de) && st.guard.wrote():
		// The transport's resend of a request the app had: a reset
		// (replay.go's wrote).
		msg = "the app at " + st.c.text + " closed the connection before its response, the request written, and does not accept connections now: " + de.err.Error()
	case errors.As(err, &de):
		kind, msg = wellknown.ErrorConnectFailure, "the app does not accept connections at "+st.c.text+": "+de.err.Error()
	}
	h.log.Debug("inbound request failed", "original_dst", st.c.text, "error", err, "request_id", st.id)
	st.code, st.errKind, st.headers = code, kind, time.Now()
	// The caller's next request must not come back on this connection to
	// an app that is not there (a pod terminating, say): closing it makes
	// the caller connect anew, and the Service send it elsewhere.
	w.Header().Set("Connection", "close")
	h.writeError(w, st, code, kind, msg)
}

// writeError writes the sidecar's own answer, in the outbound path's
// form (docs/operations.md, "Answers the sidecar gives itself").
func (h *Handler) writeError(w http.ResponseWriter, st *reqState, code int, kind, msg string) {
	body, _ := json.Marshal(struct {
		Error       string `json:"error"`
		Destination string `json:"destination"`
		Message     string `json:"message"`
		RequestID   string `json:"requestId"`
	}{kind, st.c.text, msg, st.id})
	body = append(body, '\n')
	hd := w.Header()
	hd.Set(wellknown.HeaderError, kind)
	hd.Set(wellknown.HeaderRequestID, st.id)
	hd.Set("Content-Type", "application/json")
	hd.Set("Cache-Control", "no-store")
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// finish records a request: its metrics, its span, its log line.
func (h *Handler) finish(r *http.Request, st *reqState) {
	end := time.Now()
	if st.headers.IsZero() {
		st.headers = end
	}
	if st.late != nil && st.errKind == "" {
		// The caller got a status, then a body cut short: for the metrics,
		// the span and the log line, the failure it was (as outbound).
		st.code, st.errKind = http.StatusBadGateway, wellknown.ErrorReset
	} else if st.errKind == "" && (st.out.gone || st.out.broken) {
		// The caller went away, or its connection broke, before the
		// response ended: not the success the app's status would say (as
		// outbound, docs/metrics.md).
		st.code = statusClientClosed
	}
	evictedRequest(st) // the cap cut it, not the caller (limits.go)
	if h.closing.Load() && st.errKind == "" {
		// The end of the drain (--drain-timeout) closed the connection,
		// not the caller: as outbound, a request cut is 503 shutdown,
		// and a WebSocket keeps its 101 with the relays' "shutdown".
		switch st.code {
		case statusClientClosed:
			st.code, st.errKind = http.StatusServiceUnavailable, outbound.RelayShutdown
		case http.StatusSwitchingProtocols:
			st.errKind = outbound.RelayShutdown
		}
	}
	code := st.code
	if code == http.StatusSwitchingProtocols && st.errKind == outbound.RelayReset {
		// An upgraded connection the app reset (relayUpgrade): the
		// failure it was, as a body cut short, not the 101's success.
		code = http.StatusBadGateway
	}
	h.connMetric(st.c).Observe(r.Method, code, st.headers.Sub(st.start).Seconds())
	if st.trace.Span != nil {
		endSpan(st.trace.Span, st.code, st.errKind)
	}
	if l := h.cfg.AccessLog; l != nil {
		e := telemetry.Entry{
			Time: st.start, RequestID: st.id, Service: h.cfg.ServiceName, Direction: telemetry.Inbound,
			Destination: st.c.port, OriginalDst: st.c.text,
			Method: r.Method, Path: r.URL.Path, Status: st.code, Duration: end.Sub(st.start),
			Attempts: 1, BytesIn: st.in.n.Load(), BytesOut: st.out.n, Error: st.errKind,
		}
		if st.trace.SC.IsValid() {
			e.TraceID, e.SpanID = st.trace.SC.TraceID(), st.trace.SC.SpanID()
		}
		l.Log(&e)
	}
}

// spanAttrs are a SERVER span's attributes known at its start, by the
// stable HTTP semantic conventions.
func spanAttrs(r *http.Request, st *reqState) []attribute.KeyValue {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	method, other := telemetry.SpanMethod(r.Method)
	attrs := []attribute.KeyValue{
		attribute.String("http.request.method", method),
		attribute.String("url.scheme", "http"),
		attribute.String("url.path", r.URL.Path),
		attribute.String("server.address", host),
		attribute.Int("server.port", int(st.c.addr.Port())),
		attribute.String("minimesh.request_id", st.id),
		attribute.String("minimesh.direction", telemetry.Inbound),
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		attrs = append(attrs, attribute.String("client.address", ap.Addr().Unmap().String()))
	}
	if other {
		attrs = append(attrs, attribute.String("http.request.method_original", r.Method))
	}
	if ua := r.UserAgent(); ua != "" {
		attrs = append(attrs, attribute.String("user_agent.original", ua))
	}
	return attrs
}

// endSpan ends a SERVER span: by the conventions, only a 5xx (or the
// sidecar's own failure to reach the app) is an error of the server's.
func endSpan(s trace.Span, code int, errKind string) {
	if !s.IsRecording() {
		s.End()
		return
	}
	switch {
	case code == statusClientClosed:
		s.SetAttributes(attribute.String("error.type", "client-closed"))
	case errKind != "" && code >= 500:
		s.SetAttributes(attribute.Int("http.response.status_code", code), attribute.String("error.type", errKind))
		s.SetStatus(codes.Error, errKind)
	case errKind != "" && code == http.StatusSwitchingProtocols:
		// An upgraded connection that did not end in order: the app's
		// reset is the server's failure; the idle limit's and the
		// drain's ends are named, not failures of the app's.
		s.SetAttributes(attribute.Int("http.response.status_code", code), attribute.String("error.type", errKind))
		if errKind == outbound.RelayReset {
			s.SetStatus(codes.Error, errKind)
		}
	case code >= 500:
		s.SetAttributes(attribute.Int("http.response.status_code", code), attribute.String("error.type", strconv.Itoa(code)))
		s.SetStatus(codes.Error, "")
	default:
		s.SetAttributes(attribute.Int("http.response.status_code", code))
	}
	s.End()
}

// countingBody counts the request body bytes the app was sent. The
// transport may read it from its own goroutine after the handler returns.
type countingBody struct {
	io.ReadCloser
	n     atomic.Int64
	err   atomic.Pointer[error] // the first read error but io.EOF
	ended atomic.Bool           // read to its end, or failed
	// abandoned: the exchange ended before the body (abandon); what the
	// transport reads of it from then on is an error.
	abandoned atomic.Bool
}

// errBodyAbandoned is what the transport reads of a request body after
// the app's answer has ended (abandon): the app's connection closes
// behind it, the request unfinished.
var errBodyAbandoned = errors.New("request body abandoned: the app's response is over")

func (b *countingBody) Read(p []byte) (int, error) {
	if b.abandoned.Load() {
		return 0, errBodyAbandoned
	}
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	if err != nil {
		if b.abandoned.Load() {
			return n, errBodyAbandoned // abandon's cut read, not the caller's failure
		}
		b.ended.Store(true)
		if err != io.EOF && b.err.Load() == nil {
			b.err.Store(&err)
		}
	}
	return n, err
}

// abandon ends a request body the exchange is over before (an app that
// answered without reading it all; a failure), as outbound's
// countingBody.abandon: the connection closes after the answer and the
// transport's read under way is cut (outbound.CutUpload), and the
// transport reads nothing more. Without the cut, net/http's server,
// closing the body after the answer, waited for the transport's read,
// and so for a caller that had paused. w is the server's own
// ResponseWriter.
func (b *countingBody) abandon(w http.ResponseWriter) {
	if b.ended.Load() {
		return
	}
	b.abandoned.Store(true)
	outbound.CutUpload(w)
}

// failure is the error the caller's request body ended in, or nil.
func (b *countingBody) failure() error {
	if p := b.err.Load(); p != nil {
		return *p
	}
	return nil
}

// countingWriter counts the response body bytes the caller was sent,
// over a heldstatus.Writer: the final status is held back until the first
// byte of its body or a flush (a stream's head), as outbound's is
// (docs/operations.md, "A response that fails after its headers"): an app
// that sends its head and dies before any body byte gets the caller the
// sidecar's 502 rather than a status with nothing behind it (lateBody
// withholds it, answerLate answers). Unwrap lets ReverseProxy reach the
// server's Hijacker.
type countingWriter struct {
	heldstatus.Writer
	n int64
	// broken: a write failed because the caller is gone.
	broken bool
	// gone: the caller went away while the app's response body was on
	// its way (lateBody saw the request end). Here, not in reqState, to
	// share broken's word: reqState stays in its 480-byte size class.
	gone bool
	// upgrade: the request asked for an Upgrade; a final answer other
	// than its 101 closes the connection (CloseConn is set with it).
	upgrade bool
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.Writer.Write(p)
	w.n += int64(n)
	if err != nil && outbound.ReaderGone(err) {
		w.broken = true
	}
	return n, err
}

// Hijack gives the ReverseProxy an upgrade's connection with the bytes
// the caller sent behind the request first, which Go's ReverseProxy
// would drop (outbound.HijackEarly). The ReverseProxy writes the 101
// itself: no status is left to send.
func (w *countingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := outbound.HijackEarly(w.ResponseWriter)
	if err == nil {
		w.Bypassed()
	}
	return c, brw, err
}

// bufferPool lends ReverseProxy 32 KiB copy buffers.
type bufferPool struct{}

const copyBufSize = 32 << 10

var copyBufs = sync.Pool{New: func() any { return new([copyBufSize]byte) }}

func (bufferPool) Get() []byte { return copyBufs.Get().(*[copyBufSize]byte)[:] }

func (bufferPool) Put(b []byte) {
	if len(b) == copyBufSize {
		copyBufs.Put((*[copyBufSize]byte)(b))
	}
}

// ServeTCP relays a redirected connection that is not HTTP/1.x to the app
// at its original destination, as opaque TCP, and closes it. A connect
// failure resets the caller's connection (what the caller would have met
// without the sidecar); no breaker and no retry. It ends with a metric
// (minimesh_tcp_connections_total{direction="inbound"}) and a log line.
func (h *Handler) ServeTCP(c *transparent.Conn) {
	h.relays.Add()
	defer h.relays.Done()
	c.Taken() // counted: the dispatcher's drain may stop waiting for it
	start := time.Now()
	if h.refused(c.Original, c.RemoteAddr()) {
		// Counted before the reset the caller sees.
		h.endTCP(h.forbiddenMetric(c.Original), c, start, resultForbidden, 0, 0)
		outbound.Abort(c)
		return
	}
	if c.Protocol == transparent.NoData {
		if result := h.noDataEnd(c); result != "" {
			h.endTCP(h.portMetric(c.Original.Port()), c, start, result, 0, 0)
			outbound.Abort(c)
			return
		}
	} else if h.cfg.ConnState != nil {
		// A relay from here on: neither new nor idle, for the cap and the
		// drain (detection left it new: NewServer).
		h.cfg.ConnState(c, http.StateHijacked)
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.ConnectTimeout)
	up, err := h.d.DialContext(ctx, "tcp", c.Original.String())
	cancel()
	if err != nil {
		h.log.Debug("inbound connection: the app refused", "original_dst", c.Original.String(), "error", err)
		h.endTCP(h.portMetric(c.Original.Port()), c, start, resultConnect, 0, 0)
		outbound.Abort(c)
		return
	}
	h.markReached(c.Original.Port())
	m := h.cfg.Metrics.Inbound(strconv.Itoa(int(c.Original.Port())))
	if !h.track(c, up) {
		outbound.Abort(c)
		up.Close()
		h.endTCP(m, c, start, outbound.RelayShutdown, 0, 0)
		return
	}
	sent, received, result := h.relay(c, up, m) // limits.go: no-data's first byte
	h.untrack(c)
	result = evictedResult(c, result) // the cap closed it (limits.go)
	if result == outbound.RelayReset && h.closing.Load() {
		result = outbound.RelayShutdown
	}
	h.endTCP(m, c, start, result, sent, received)
}

// endTCP records an opaque connection: its metric and its log line.
func (h *Handler) endTCP(m *telemetry.Destination, c *transparent.Conn, start time.Time, result string, sent, received int64) {
	m.TCPConnection(result)
	if l := h.cfg.AccessLog; l != nil {
		e := telemetry.Entry{
			Time: start, Service: h.cfg.ServiceName, Direction: telemetry.Inbound, Destination: m.Label(),
			Protocol: string(c.Protocol), OriginalDst: c.Original.String(), SNI: c.SNI,
			Duration: time.Since(start), Attempts: 1, BytesIn: sent, BytesOut: received,
		}
		if result != outbound.RelayOK {
			e.Error = result
		}
		l.Log(&e)
	}
}

func (h *Handler) track(c, up net.Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing.Load() {
		return false
	}
	h.conns[c] = up
	return true
}

func (h *Handler) untrack(c net.Conn) {
	h.mu.Lock()
	delete(h.conns, c)
	h.mu.Unlock()
}

// relayLogGrace bounds the drain's wait for the log lines of the relays
// it closed.
const relayLogGrace = time.Second

// Drain lets the opaque relays and upgraded connections run until ctx is
// done, then closes the relays left and waits (briefly) for their log
// lines.
func (h *Handler) Drain(ctx context.Context) {
	select {
	case <-h.relays.Idle():
		select {
		case <-h.upgrades.Idle():
			return
		case <-ctx.Done():
		}
	case <-ctx.Done():
	}
	h.mu.Lock()
	h.closing.Store(true)
	for c, up := range h.conns {
		c.Close()
		up.Close()
	}
	h.mu.Unlock()
	select {
	case <-h.relays.Idle():
	case <-time.After(relayLogGrace):
	}
}

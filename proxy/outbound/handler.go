// Package outbound is the sidecar's outbound HTTP path: it takes the
// app's requests (absolute-form proxy requests, origin-form requests with a
// Host header, and CONNECT tunnels), finds the destination's policy, and
// forwards each request through the destination's circuit breaker with
// timeouts and retries.
//
// The forwarding itself is net/http/httputil.ReverseProxy, which already
// strips hop-by-hop headers, streams bodies, flushes event streams and
// passes Upgrade (WebSocket) connections through; the resilience is its
// Transport.
package outbound

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/internal/echo"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/breaker"
	"github.com/minimesh/minimesh/proxy/internal/field"
	"github.com/minimesh/minimesh/proxy/internal/inflight"
	"github.com/minimesh/minimesh/proxy/internal/nobody"
	"github.com/minimesh/minimesh/proxy/requestid"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/wellknown"
	"go.opentelemetry.io/otel/trace"
)

// Config is the outbound path's configuration.
type Config struct {
	// Namespace is the sidecar's namespace, for matching short names.
	Namespace string
	// Resolve maps host:port to the address dialled instead.
	Resolve map[string]string
	// ConnectTimeout bounds making an upstream connection.
	ConnectTimeout time.Duration
	// MaxIdleConnsPerHost is how many kept-alive connections to one
	// destination wait for reuse. Go's default of 2 would make a busy app
	// open and close connections at its request rate.
	MaxIdleConnsPerHost int
	// StdTransport sends every request through httputil.ReverseProxy and
	// http.Transport instead of the fast path for bodiless HTTP/1 GET, HEAD
	// and OPTIONS requests (fastProxy and fastTransport).
	StdTransport bool
	// MaxRequestBody bounds request bodies (0: no bound).
	MaxRequestBody int64
	// RequestBodyTimeout bounds the wait for each read of a request body
	// (0: DefaultRequestBodyTimeout; negative: none): an app that stops
	// sending its body must not hold an upstream connection for ever.
	RequestBodyTimeout time.Duration
	// ServiceName names the app in access logs.
	ServiceName string
	Metrics     *telemetry.Metrics
	// Tracing makes spans; nil: no tracing.
	Tracing *telemetry.Tracing
	// AccessLog gets a line per request; nil: no access log.
	AccessLog *telemetry.AccessLog
	Logger    *slog.Logger
	// TCPIdleTimeout closes an opaque TCP relay (ServeTCP), a CONNECT
	// tunnel or an upgraded connection (a WebSocket after its 101) that
	// moved no byte either way for this long (0: DefaultTCPIdleTimeout).
	TCPIdleTimeout time.Duration
	// StreamIdleTimeout ends an app-paced stream (appPaced: a gRPC call,
	// an HTTP/2 body without a content-length) that moved no byte either
	// way for this long (0: DefaultStreamIdleTimeout; negative: none).
	StreamIdleTimeout time.Duration
}

// Handler is the outbound listener's http.Handler.
type Handler struct {
	cfg     Config
	dests   *destinations
	rp      *httputil.ReverseProxy
	dialer  *dialer
	self    *selfAddrs
	hop     hop
	tunnels tunnels
	// upgrades counts upgraded (WebSocket) connections in flight, which
	// http.Server.Shutdown does not wait for.
	upgrades inflight.Counter
	// draining makes every response close its connection, so that a
	// keep-alive client learns of the shutdown from its next answer
	// instead of a connection closed under a request in flight.
	draining atomic.Bool
	// closing is set as the drain closes the tunnels and relays left.
	closing atomic.Bool
	// dials, the parent of the connects of tunnels and relays, is
	// cancelled with errShutdown as closing is set (endDials): one still
	// dialling then is cut by the drain, not left to its connect timeout
	// after the process stopped waiting for it.
	dials    context.Context
	endDials context.CancelCauseFunc
	// requests counts serve calls in flight (an atomic add at each end,
	// no lock), for AwaitRequests.
	requests atomic.Int64
	// relays counts ServeTCP calls and CONNECT tunnels (from their
	// request) in flight, so that the drain waits for them, including one
	// whose connections are not known yet, and for the log lines of
	// those it closed.
	relays inflight.Counter
	log    *slog.Logger
	// rpOnly sends every request through rp, fastProxy's requests too:
	// for the test that compares the two.
	rpOnly atomic.Bool
}

// AddListener declares one of the sidecar's own listeners: nothing sent
// through the sidecar may connect to it, by any name or address.
func (h *Handler) AddListener(addr net.Addr) { h.self.add(addr) }

// CloseIdleConnections closes the kept upstream connections, as the
// sidecar stops.
func (h *Handler) CloseIdleConnections() {
	f := h.rp.Transport.(*forwarder)
	for _, t := range [...]http.RoundTripper{f.t, f.h2} {
		if c, ok := t.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
}

// SetDraining turns on (or off) "Connection: close" on every response.
func (h *Handler) SetDraining(v bool) { h.draining.Store(v) }

// New returns a handler applying the policies of table.
func New(cfg Config, table *policy.Table) *Handler {
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.RequestBodyTimeout == 0 {
		cfg.RequestBodyTimeout = DefaultRequestBodyTimeout
	} else if cfg.RequestBodyTimeout < 0 {
		cfg.RequestBodyTimeout = 0
	}
	if cfg.MaxIdleConnsPerHost <= 0 {
		cfg.MaxIdleConnsPerHost = 256
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = telemetry.New(0)
	}
	if cfg.TCPIdleTimeout <= 0 {
		cfg.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	if cfg.StreamIdleTimeout == 0 {
		cfg.StreamIdleTimeout = DefaultStreamIdleTimeout
	} else if cfg.StreamIdleTimeout < 0 {
		cfg.StreamIdleTimeout = 0
	}
	h := &Handler{cfg: cfg, log: cfg.Logger, self: newSelfAddrs(), hop: newHop()}
	h.dials, h.endDials = context.WithCancelCause(context.Background())
	h.dialer = newDialer(cfg.ConnectTimeout, cfg.Resolve, h.self)
	h.dialer.log = h.log
	h.dests = newDestinations(cfg.Namespace, table, cfg.Metrics, h.log.Warn)
	tr := &http.Transport{
		Proxy:                  nil, // never the sidecar's own HTTP_PROXY: that would loop
		DialContext:            h.dialer.pooled(poolStd),
		MaxIdleConns:           maxIdleTotal, // fastpath.go: all hosts together, as the fast transport's
		MaxIdleConnsPerHost:    cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:        90 * time.Second,
		DisableCompression:     true, // pass Accept-Encoding and bodies through untouched
		MaxResponseHeaderBytes: MaxHeaderBytes,
		ExpectContinueTimeout:  time.Second,
	}
	var upstream http.RoundTripper = informational{tr}
	var fast *fastTransport
	if !cfg.StdTransport {
		fast = newFastTransport(h.dialer.pooled(poolFast), upstream, cfg.MaxIdleConnsPerHost)
		upstream = fast
	}
	// The fast transport's idle connections closed at its cap of all
	// hosts; Go's transports count none of theirs.
	cfg.Metrics.ListenerEvicted("upstream", func() uint64 {
		if fast == nil {
			return 0
		}
		return fast.evicted.Load()
	})
	h2 := newH2CTransport(h.dialer.pooled(poolH2))
	// An endpoint that leaves its Service takes its kept connections.
	h.dests.eps.retire = h.dialer.retirer(fast, tr, h2, h.log)
	h.rp = &httputil.ReverseProxy{
		Rewrite:        h.rewrite,
		Transport:      &forwarder{t: upstream, h2: h2Tries{h2}, tracing: cfg.Tracing},
		BufferPool:     bufferPool{},
		ErrorHandler:   h.serveError,
		ModifyResponse: h.modifyResponse,
		ErrorLog:       slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
	}
	cfg.Metrics.WatchBreakers(h.breakerStates)
	cfg.Metrics.WatchEndpoints(h.dests.eps.counts)
	return h
}

// DefaultRequestBodyTimeout is how long the sidecar waits for the next
// bytes of a request body, like nginx's client_body_timeout.
const DefaultRequestBodyTimeout = 30 * time.Second

// DefaultStreamIdleTimeout is how long an app-paced stream may move no
// byte either way: the opaque TCP relay's idle limit, a stream being as
// opaque to the sidecar as a relayed connection once it flows.
const DefaultStreamIdleTimeout = DefaultTCPIdleTimeout

// MaxHeaderBytes bounds request and response headers, like Envoy's
// default of 60 KiB; Go's own default of 1 MiB is far more than any
// service needs.
const MaxHeaderBytes = 64 << 10

// AwaitRequests waits at most d for the requests in flight to end and be
// recorded, and reports whether they did. The drain's end closes the
// servers under the requests still running; each then ends at once, but
// on its own goroutine, and the access log must not close before its
// line is written.
func (h *Handler) AwaitRequests(d time.Duration) bool {
	for deadline := time.Now().Add(d); h.requests.Load() > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// SetPolicies swaps in new policies. Requests in flight finish under the
// policy they started with.
func (h *Handler) SetPolicies(t *policy.Table) { h.dests.setTable(t) }

// SetEndpoints replaces the endpoints of every Service (keyed by EDS
// resource name, docs/controlplane.md): requests to a Service are
// balanced over its endpoints from the next try on. The handler keeps
// eps: the caller must not change it afterwards.
func (h *Handler) SetEndpoints(eps map[string][]balancer.Target) { h.dests.eps.set(eps) }

// Endpoints returns every Service's endpoints, for /debug/endpoints.
func (h *Handler) Endpoints() []EndpointsStatus { return h.dests.eps.statuses() }

// Breakers returns every destination's breaker, for /debug/breakers.
func (h *Handler) Breakers() []BreakerStatus { return h.dests.statuses() }

// ResetBreaker closes one destination's breaker, named as /debug/breakers
// names it or as an app may spell it; it returns that name, or false if
// there is no such breaker.
func (h *Handler) ResetBreaker(destination string) (string, bool) { return h.dests.reset(destination) }

func (h *Handler) breakerStates() []telemetry.BreakerState {
	st := h.dests.statuses()
	out := make([]telemetry.BreakerState, len(st))
	for i, s := range st {
		out[i] = telemetry.BreakerState{Destination: h.cfg.Metrics.Destination(s.Destination).Label(), State: s.State}
	}
	return out
}

// reqState follows one request through the ReverseProxy into the
// forwarder and back, in the request's context.
type reqState struct {
	// Context is the request's context, which the state extends with
	// itself (Value): a context.WithValue would be an allocation more.
	context.Context
	dest *destination
	// authority is what the transport dials: the host:port the app asked
	// for, so that connection pools are per authority and --resolve sees
	// the name the app used.
	authority string
	// dial, on a redirected connection, is the original destination: what
	// the transport dials instead of authority, which only names the
	// destination (docs/interception.md).
	dial string
	// ep is the endpoint of the latest try (the balancer's pick), nil when
	// the name was dialled.
	ep *balancer.Endpoint
	// pin, on a redirected connection to one of the named Service's
	// endpoints, is that endpoint: every try goes there (pinned).
	pin *balancer.Endpoint
	// pinDial, on a redirected connection to an address of a family none
	// of the named Service's endpoints has, sends every try to dial,
	// unbalanced (pinned).
	pinDial bool
	// tried are the endpoints of the request's tries, which its retries
	// avoid (pickEndpoint).
	tried balancer.Tried
	id    string
	// idv holds id for the request's and the answer's header (idValue).
	idv [1]string
	// ownID says id is one the sidecar made (requestid.New): a line's
	// value as it is, which fastProxy need not check (idLine).
	ownID bool
	// hdr holds header values of the sidecar's own answer
	// (writeCircuitOpen), in room the state's size class has spare.
	hdr [2]string
	// admitted is the breaker's permission for the first try, taken by
	// failFast when the breaker read open but had just half-opened; nil
	// when the first try asks the breaker itself.
	admitted breaker.Done
	replay   *replay
	attempts int
	code     int
	// headers is how long after start the response headers were ready
	// (0: not yet): the latency metric ends there, so that a long stream
	// does not look slow.
	headers time.Duration
	start   time.Time
	// deadline is the request's timeout on the fast path (fastProxy):
	// the fast transport's deadlines, where other requests' is a context.
	deadline time.Time
	errKind  string // the X-Minimesh-Error of the sidecar's own answer
	// late is how the upstream's response failed after its headers (a
	// reset, a timeout); 0 when it did not.
	late policy.Class
	// lateErr is the error that body failed with, which answerLate's
	// message names (nil: none read, a timeout's cut).
	lateErr error
	// gone is an app that went away while its response's body was on
	// its way (upstreamBody.Read saw the request end).
	gone     bool
	upgrade  bool
	rejected bool
	// arrived: the server holds all of the request's body (leanhttp's
	// Arrived), which can be read whole without waiting for the app.
	arrived bool
	// rawOK asks the fast transport for the response head's fields as
	// lines (raw), which fastProxy passes on to leanhttp's SetRawHeader.
	rawOK bool
	// grpc is a gRPC call (HTTP/2, content-type application/grpc*):
	// grpcStatus is its status once known (-1: not yet), from the
	// upstream's trailers or headers or the sidecar's own answer.
	grpc bool
	// grpcTrailed: the sidecar ended the call with its own trailers
	// after the upstream's failed (endGRPC); grpcStatus is theirs.
	grpcTrailed bool
	grpcStatus  int
	// ownTimeout is a gRPC call's grpc-timeout as its client sent it,
	// also when the policy's shorter timeout is the call's time (0:
	// none): the client's reset at that deadline is its library's
	// DEADLINE_EXCEEDED (grpcCut).
	ownTimeout time.Duration
	// callDeadline is a gRPC call's deadline when its time is the
	// client's grpc-timeout (zero: the policy's, or none).
	callDeadline time.Time
	trace        telemetry.Place // the span's context kept for the log after the span ended
	in           countingBody
	out          countingWriter
	body         upstreamBody // the current try's response body
	// url is the outbound request's URL on the fast path (fastProxy).
	url url.URL
	// raw is the latest try's response head as lines, when rawOK asked
	// the fast transport for them (nil: it came as a header map).
	raw []byte
	// wire is the fast transport's room for the response (respScratch):
	// its lines' room is kept when the state is lent again.
	wire respScratch
}

type stateKey struct{}

// requestIDKey is wellknown.HeaderRequestID as net/http spells header
// map keys.
var requestIDKey = http.CanonicalHeaderKey(wellknown.HeaderRequestID)

func stateOf(ctx context.Context) *reqState { return ctx.Value(stateKey{}).(*reqState) }

// RequestContext is the request's state, empty, as the context a server
// gives the request (leanhttp.Server's RequestContext): serve fills it in
// and fastProxy forwards the request itself, not a copy of it with the
// state as its context. prev is the state of an earlier request that
// the server lends again (nothing waited on its context, so nothing, a
// transport's goroutine, reads the state past its end), emptied as that
// request ended (EndRequest): it serves again.
func RequestContext(ctx, prev context.Context) context.Context {
	if st, ok := prev.(*reqState); ok {
		st.Context = ctx
		return st
	}
	return &reqState{Context: ctx}
}

// EndRequest empties the state as the lean loop takes its request back,
// keeping only the room for response lines: a state the server keeps
// for a later request holds nothing of this one alive (the upstream
// connection, the destination, the answer's lines).
func (st *reqState) EndRequest() {
	lines := st.wire.lines[:0]
	*st = reqState{Context: st.Context}
	if cap(lines) <= maxKeptLines {
		st.wire.lines = lines
	}
}

// maxKeptLines bounds the room for response lines a state keeps between
// requests: an upstream's rare long head (up to MaxHeaderBytes) is not
// kept with every state the server holds.
const maxKeptLines = 4 << 10

// Value makes the state its request's context: stateOf finds it there.
func (st *reqState) Value(key any) any {
	switch key.(type) {
	case stateKey:
		return st
	case informKey:
		return st
	}
	return st.Context.Value(key)
}

// idValue is the request ID as a header value, shared by the request and
// the answer: full (len == cap), so that an append never writes into it.
func (st *reqState) idValue() []string { return st.idv[:] }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.serve(w, r, nil) }

// serve handles a request; rd is the original destination of a
// redirected connection, nil for a request to the proxy itself.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, rd *redirect) {
	h.requests.Add(1)
	defer h.requests.Add(-1) // after finish: the request is recorded
	start := time.Now()
	closeConn := h.draining.Load()
	if closeConn {
		// For the answers written before the request's state exists;
		// countingWriter sets it on the others as their status goes out.
		w.Header().Set("Connection", "close")
	}
	if r.Method == http.MethodConnect {
		if r.ProtoMajor == 1 {
			// The bytes behind a CONNECT are its tunnel's, not requests,
			// and the TE10 guard stops following the connection there:
			// read as requests after a refusal they would be smuggled. So
			// every answer but the tunnel's 200 (written on the hijacked
			// connection, without this header) ends the connection, on
			// either listener, as Envoy's does (docs/operations.md).
			w.Header().Set("Connection", "close")
		}
		if rd == nil {
			if r.ProtoMajor >= 2 {
				// A tunnel is a hijacked HTTP/1.1 connection; an HTTP/2
				// stream cannot be one.
				h.refuse(w, r, http.StatusMethodNotAllowed, wellknown.ErrorBadRequest, "", "CONNECT over HTTP/2 is not supported: send it over HTTP/1.1")
				return
			}
			h.serveConnect(w, r, start)
			return
		}
	}
	var authority string
	var dst *destination
	var err error
	byHost := false
	if rd != nil {
		authority, byHost, err = rd.authority(r)
	} else if host, ok := defaultPortHost(r); ok {
		authority, dst = h.dests.onDefaultPort(host)
	} else {
		authority, err = target(r)
	}
	if err == nil && len(authority) > maxAuthority {
		err, dst = checkAuthority(authority), nil
	}
	if err != nil {
		h.refuse(w, r, http.StatusBadRequest, wellknown.ErrorBadRequest, "", err.Error())
		return
	}
	// The app's lines, when the lean loop gives them (leanhttp), say
	// which fields are absent without a look-up.
	var lines field.RequestLines
	lined := false
	if rl, ok := w.(requestLiner); ok {
		lines, lined = rl.RequestLines()
	}
	if !(lined && lines.ViaEnd == 0) && h.hop.seen(r.Header) {
		h.log.Warn("request loop refused", "authority", authority, "via", echo.Clip(strings.Join(r.Header.Values("Via"), ", ")))
		h.refuse(w, r, http.StatusLoopDetected, wellknown.ErrorLoop, canonical(authority, h.dests.namespace),
			"request to "+authority+" has already passed through this sidecar (Via): a forwarding loop")
		return
	}
	if len(r.TransferEncoding) > 0 {
		// Go's server drops a Content-Length sent beside Transfer-Encoding
		// before the handler sees it, and RFC 9112 §6.1 wants the
		// connection of such a request closed after the response: every
		// chunked request closes its connection.
		closeConn = true
	}
	if dst == nil {
		dst = h.dests.get(authority)
	}

	// Made per request here: the transport may still read the request
	// body (and so the counters in st) after ServeHTTP returns. The lean
	// loop made it the request's context already (RequestContext), and
	// lends it again only when nothing waited on that context.
	base := r.Context()
	st, made := base.(*reqState)
	if made {
		base = st.Context
	} else {
		st = new(reqState)
	}
	st.dest, st.authority, st.code, st.start = dst, authority, http.StatusBadGateway, start
	st.wire.app, st.wire.appOK = lines, lined
	if rd != nil {
		st.dial = rd.text
		if byHost {
			st.pin, st.pinDial = pinned(dst.lb, rd.addr, rd.text)
		}
	}
	if r.ProtoMajor == 2 && isGRPC(r.Header) {
		st.grpc, st.grpcStatus = true, -1
	}
	st.out.ResponseWriter = w
	st.out.CloseConn, st.out.Draining = closeConn, &h.draining
	st.out.HTTP10 = r.ProtoMajor == 1 && r.ProtoMinor == 0
	w = &st.out

	// The map read under the canonical key: Header.Get and Set would
	// canonicalize "X-Request-ID" into a new string on every call. The
	// ID goes out as st.id: each try writes it into the map it sends
	// (forwarder.try), or with the app's lines (writeRequestLines).
	if !lined || lines.RequestID {
		if ids := r.Header[requestIDKey]; len(ids) > 0 {
			st.id = ids[0]
		}
	}
	if !requestid.Valid(st.id) {
		st.id, st.ownID = requestid.New(), true
	}
	st.idv[0] = st.id
	st.upgrade = (!lined || lines.Upgrade) && field.Get(r.Header, "Upgrade") != ""
	if st.upgrade && !lined {
		// An h2c upgrade is served as a plain request, its retries and
		// connection kept (docs/operations.md, "Upgrade requests"); the
		// lean loop hands every Upgrade to net/http, whose map this is.
		var h2cOnly bool
		if st.upgrade, h2cOnly = DropH2CUpgrade(r.Header); !st.upgrade && !h2cOnly {
			st.out.CloseConn = true // the guard no longer follows the connection
		}
	}
	if st.upgrade {
		h.upgrades.Add()
		defer h.upgrades.Done()
		// Any answer but a 101 closes the connection: what the app sent
		// behind the head is the protocol it asked for, never a next
		// request (docs/operations.md, "Upgrade requests").
		st.out.CloseConn = true
	}
	// A body whose Content-Length is over the limit gets its 413 before
	// any try (tooLarge), as nginx's client_max_body_size answers: sent,
	// the upstream would get the head and the first bytes, then the cut,
	// which a non-idempotent one may act on. Bodies of unknown length
	// (chunked, HTTP/2 without content-length) meet the limit as read.
	overLimit := false
	if r.Body != nil && !nobody.Is(r.Body) {
		st.arrived = arrived(r.Body)
		if h.cfg.MaxRequestBody > 0 {
			overLimit = r.ContentLength > h.cfg.MaxRequestBody
			// No writer: the upstream transport reads the body on a
			// goroutine of its own, where net/http's writer, over the
			// limit, would set Connection: close in the response's
			// header map (requestTooLarge) while the handler writes the
			// upstream's headers there: a data race, a crash on
			// concurrent map writes. The answer closes the connection
			// itself (serveError's Connection: close for the app's
			// fault); a late one's (answerLate) leaves the rest of the
			// body to the server, which reads or closes past it.
			r.Body = http.MaxBytesReader(nil, r.Body, h.cfg.MaxRequestBody)
		}
		st.in.ReadCloser = r.Body
		r.Body = &st.in
	}
	ctx := base
	if tr := h.cfg.Tracing; tr != nil {
		hdr := r.Header
		if lined && !telemetry.MayCarry(lines.Text) {
			hdr = nil // no field Begin reads: no look-ups
		}
		ctx, st.trace = tr.Begin(ctx, hdr, r.Method, trace.SpanKindClient)
		if st.trace.Span != nil { // recorded
			st.trace.Span.SetAttributes(h.spanAttrs(r, st)...)
			if st.grpc {
				// The RPC semantic conventions: named $service/$method.
				if _, _, ok := grpcMethod(r.URL.Path); ok {
					st.trace.Span.SetName(r.URL.Path[1:])
				}
				st.trace.Span.SetAttributes(grpcSpanAttrs(r.URL.Path)...)
			}
		}
	}
	st.Context = ctx
	h.run(w, r, st, overLimit)
}

// run answers a request whose state serve made, and records it. Its
// defers and answer's are split from serve's: a function with more than
// eight defers, or many returns beside them, has them made at run time
// and unwound by the runtime (deferreturn, about 270 instructions a
// request); each of these three has them inlined at its returns
// (docs/benchmarks.md, "Fewer instructions per request, measured"). The
// order is serve's as one function: answer's defers, then abandon,
// finish, and serve's own.
func (h *Handler) run(w http.ResponseWriter, r *http.Request, st *reqState, overLimit bool) {
	defer h.finish(r, st)
	if st.in.ReadCloser != nil {
		// Deferred, and so before finish (which logs the bytes read): a
		// panic (the ReverseProxy's abort of a response cut short) must
		// end the upload's reads too, before the server takes the
		// connection back.
		defer st.in.abandon(st.out.ResponseWriter)
	}
	// Full duplex: otherwise Go's HTTP/1 server drains and closes the
	// request body as the response starts, while the Transport may still
	// be reading it; that read fails and the upstream connection is closed
	// mid-response. A request without a body has nothing to drain (and
	// the controller's walk of the writer's interfaces was ~1 % of the
	// sidecar's user time at 1,000 req/s).
	if st.in.ReadCloser != nil {
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	h.answer(w, r, st, overLimit)
}

// answer sends the request on, or answers it itself, under the timeouts
// its policy and its kind ask for (run).
func (h *Handler) answer(w http.ResponseWriter, r *http.Request, st *reqState, overLimit bool) {
	var ctx context.Context = st
	start := st.start
	// Neither the 413 of a body announced over the limit nor an open
	// breaker's answer needs what follows: the timeout's timer, the
	// ReverseProxy's copy of the request, the forwarder.
	if overLimit {
		h.tooLarge(w, r, st)
	} else if !h.failFast(w, st) {
		// The whole-request timeout covers the response body too; an
		// upgrade's, only the wait for its response head: an upgraded
		// connection (a WebSocket) lives as long as its peers want.
		t := st.dest.policy.Spec.Timeout
		if st.grpc {
			var client bool
			if t, client = st.callTimeout(r.Header, t); client {
				// The client ends its call at its own deadline, and reads
				// DEADLINE_EXCEEDED; the sidecar's timer, a moment later, is
				// for one that does not. At the same moment, its cut could
				// reach the client first: INTERNAL.
				st.callDeadline = start.Add(t)
				t += grpcDeadlineSlack
			}
		}
		fast := h.fastProxied(r, st)
		switch {
		case t <= 0:
		case fast:
			// The fast transport keeps it as a deadline on its
			// connection: no timer, context nor AfterFunc of its own.
			st.deadline = start.Add(t)
		case st.upgrade:
			// Up to the response's head only: a 101 stops it
			// (modifyResponse), and the tunnel then lives as long as its
			// peers want; any other answer is a response as any other's.
			var cancel context.CancelCauseFunc
			ctx, cancel = context.WithCancelCause(ctx)
			defer cancel(nil)
			g, rw := &headTimeout{}, st.out.ResponseWriter
			g.t = time.AfterFunc(t, func() {
				if g.state.CompareAndSwap(headWaiting, headTimedOut) {
					cancel(errTimeout)
					if st.in.ReadCloser != nil {
						st.in.wake(rw) // a body, stalled, as below
					}
				}
			})
			defer g.t.Stop()
			ctx = context.WithValue(ctx, headTimeoutKey{}, g)
		default:
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeoutCause(ctx, t, errTimeout)
			defer cancel()
			// The timeout covers the writes of the answer to the app too:
			// one an app that reads nothing holds up ends then. And the
			// answer must not wait for the app's HTTP/1 body:
			// http.Transport returns only once its body writer is done
			// (wake).
			var stalled *countingBody
			if st.in.ReadCloser != nil && r.ProtoMajor == 1 {
				stalled = &st.in
			}
			defer cutStalledWrites(ctx, st.out.ResponseWriter, stalled)()
		}
		paced := !fast && appPaced(r, st)
		if paced && !st.upgrade && h.cfg.StreamIdleTimeout > 0 { // an upgrade's tunnel: TCPIdleTimeout
			var cancel context.CancelCauseFunc
			var stop func() bool
			ctx, cancel, stop = h.streamIdle(ctx, st)
			defer cancel(nil)
			defer stop() // first: the watch's expire may still cancel
		}
		if st.in.ReadCloser != nil && h.cfg.RequestBodyTimeout > 0 && !fast && !paced { // fastProxy's: readBody
			var cancel context.CancelCauseFunc
			ctx, cancel = context.WithCancelCause(ctx)
			defer cancel(nil)
			rw := st.out.ResponseWriter
			// The handler may return once cancelled, and the stream is
			// not its own after that: its stop waits for this to end.
			stop := st.in.watch(h.cfg.RequestBodyTimeout, func() {
				cancel(errBodyTimeout)
				_ = http.NewResponseController(rw).SetReadDeadline(time.Unix(1, 0))
			})
			defer stop()
		}
		if fast {
			h.fastProxy(w, r, ctx, st)
		} else {
			h.rp.ServeHTTP(w, r.WithContext(ctx))
		}
	}
	if st.late != 0 && !st.out.Sent() {
		h.answerLate(w, st)
	}
	// An app that went away gets nothing: net/http would send a 200 of
	// its own for a handler that wrote none, which a half-closed client
	// would still read.
	gone := st.code == statusClientClosed && !st.out.Sent() && st.out.Code() == 0
	if !gone {
		st.out.Commit()
	}
	if gone {
		panic(http.ErrAbortHandler) // the deferred finish records the 499
	}
}

// appPaced reports whether a request's body is a stream the app writes
// at its own pace, which --request-body-timeout leaves alone: a gRPC call,
// and any other HTTP/2 body without a content-length. The watch ends as
// the response's headers arrive, but grpc-go's server sends those only
// with its first message, and a client-streaming call's server reads to
// the end first: a client that paused longer than the limit was cut with
// DEADLINE_EXCEEDED. Such a stream holds no connection of its own, but
// one of its app connection's H2MaxConcurrentStreams streams (under the
// listener's connection cap) and one stream of the destination's h2c
// connection; the policy's timeout and the call's grpc-timeout bound its
// time, and, the default policy having none, StreamIdleTimeout one quiet
// both ways (as Envoy's stream_idle_timeout, 5 min by default, which
// activity either way resets; Linkerd has none). It is never read ahead
// of the upstream either (forward.go): its next bytes may wait for the
// first answer. An HTTP/1.x body, and
// an HTTP/2 one of a declared length (an upload the upstream waits for
// whole), keep the watch: a stall there holds an upstream connection, or
// is an upload gone wrong (docs/operations.md, "Limits and failure
// behaviour").
func appPaced(r *http.Request, st *reqState) bool {
	return st.grpc || r.ProtoMajor == 2 && r.ContentLength < 0
}

// streamIdle ends an app-paced stream that moved no byte either way for
// StreamIdleTimeout, as the sidecar's own timeout (errTimeout: a 504
// before the response's headers, the gRPC status of its timeouts, a
// reset after), never the app's fault nor a success: without it a stream
// both sides went quiet on would hold its app stream and its upstream
// stream for ever. One timer a stream; the bytes only note their time.
func (h *Handler) streamIdle(ctx context.Context, st *reqState) (context.Context, context.CancelCauseFunc, func() bool) {
	act := &streamActivity{base: time.Now()}
	st.in.activity, st.out.activity = act, act
	ctx, cancel := context.WithCancelCause(ctx)
	rw := st.out.ResponseWriter
	stop := startIdleWatch(h.cfg.StreamIdleTimeout, act, func() {
		cancel(errTimeout)
		if st.in.ReadCloser != nil {
			st.in.wake(rw) // a read waiting for the app's next bytes
		}
		// A write blocked on an app that reads nothing moves no byte
		// either: as at the request's timeout (cutStalledWrites).
		_ = http.NewResponseController(rw).SetWriteDeadline(time.Now().Add(stalledWriteGrace))
	})
	return ctx, cancel, stop
}

// answerLate replaces a response whose upstream failed after its headers
// but before the app received any of it with the sidecar's own answer.
func (h *Handler) answerLate(w http.ResponseWriter, st *reqState) {
	code, kind, body := lateAnswer(st)
	clear(w.Header())
	if rs, ok := st.out.ResponseWriter.(rawHeaderSetter); ok {
		rs.SetRawHeader(nil) // the upstream's fields, as lines (fastProxy)
	}
	// The ReverseProxy has returned: nothing commits the status but this
	// answer now.
	st.out.Rehold()
	st.code, st.errKind, st.late = code, kind, 0
	body.RequestID = st.id
	w.Header()[requestIDKey] = st.idValue()
	if st.grpc {
		st.grpcStatus = grpcAnswer(kind, code)
		st.code = http.StatusOK
		writeGRPCError(w, st.grpcStatus, kind, body)
		return
	}
	writeError(w, code, kind, body)
}

// failFast answers a request whose destination's breaker is open, as
// the first try would have been refused, but before the ReverseProxy and
// the request's timeout. It reports false, having answered nothing, for
// a breaker that does not read open, and for requests the ReverseProxy
// itself might answer or that the forwarder reads before its first try
// (a body, an upgrade).
func (h *Handler) failFast(w http.ResponseWriter, st *reqState) bool {
	b := st.dest.breaker
	if b == nil || b.Cached() != breaker.Open || st.upgrade || st.in.ReadCloser != nil {
		return false
	}
	done, err := b.Allow()
	if err == nil {
		// The open timeout has just passed: this request is a probe, and
		// its first try uses the permission taken here.
		st.admitted = done
		return false
	}
	// What the forwarder would have done up to the refusal.
	dst := st.dest
	dst.begin(st.start)
	st.attempts = 1
	st.reject()
	retryAfter := int(b.RetryAfter(time.Now()) / time.Second)
	if !st.grpc {
		st.code, st.headers, st.errKind = http.StatusServiceUnavailable, elapsed(st.start), wellknown.ErrorCircuitOpen
		w.Header()[requestIDKey] = st.idValue()
		if writeCircuitOpen(w, dst.name, st.id, retryAfter, &st.hdr) {
			return true
		}
	}
	// What serveError answers, by the general means.
	code, kind, body := errorResponse(&circuitOpenError{destination: dst.name, retryAfter: time.Duration(retryAfter) * time.Second}, dst.name)
	st.answer(w, code, kind, body)
	return true
}

// tooLarge answers a request whose Content-Length is over
// --max-request-body-bytes, before any try: nothing is dialled, nothing
// reaches the breaker, and the access log, the metric and the span say
// what they say of a body found over the limit as it is read (413
// bad-request; a gRPC call's RESOURCE_EXHAUSTED), with no attempt.
func (h *Handler) tooLarge(w http.ResponseWriter, r *http.Request, st *reqState) {
	st.dest.begin(st.start) // as the forwarder counts every request in the retry budget
	code, kind, body := errorResponse(&http.MaxBytesError{Limit: h.cfg.MaxRequestBody}, st.dest.name)
	// The body left unread cannot be told from a next request: the
	// connection ends with the answer, as serveError's for the app's fault.
	closeAfter(w, r)
	st.answer(w, code, kind, body)
}

// closeAfter ends r's HTTP/1.x connection with the answer, where the
// unread rest of r's body cannot be told from a next request. Not an
// HTTP/2 one: its streams are framed, nothing there needs resyncing, and
// Go's server takes Connection: close as a GOAWAY for the app's whole
// connection, every later stream to be dialled again (a review,
// 2026-12-06).
func closeAfter(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
}

// refuse answers a request refused before it has a destination's
// metrics and breaker (dest names it when it is known, else ""); the app
// still gets an ID to quote.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, code int, kind, dest, msg string) {
	id := r.Header.Get(wellknown.HeaderRequestID)
	if !requestid.Valid(id) {
		id = requestid.New()
	}
	w.Header().Set(wellknown.HeaderRequestID, id)
	if code == http.StatusBadRequest || field.Get(r.Header, "Upgrade") != "" {
		// An upgrade's, as its other answers (serve). A request target
		// the sidecar cannot forward says the app took the connection for
		// something it is not (a redirected one for a proxy, a proxy for
		// a TLS origin): what it sends next on it is not served either
		// (docs/operations.md, "Answers the sidecar gives itself").
		closeAfter(w, r)
	}
	if r.ProtoMajor == 2 && isGRPC(r.Header) {
		writeGRPCError(w, grpcAnswer(kind, code), kind, errorBody{Destination: dest, Message: msg, RequestID: id})
		return
	}
	writeError(w, code, kind, errorBody{Destination: dest, Message: msg, RequestID: id})
}

// finish records a request: metrics, its span, its access log line.
func (h *Handler) finish(r *http.Request, st *reqState) {
	if st.late != 0 && st.out.Sent() {
		// The upstream's response failed after its status went to the
		// app, and the handler is aborting (the ReverseProxy's panic,
		// fastProxy's): what the server still holds of the answer (a
		// Content-Length body is buffered, not flushed) goes out first,
		// or the abort would drop the status and the bytes the access
		// log counts. The app gets the status and part of the body, then
		// the cut (docs/operations.md, "A response that fails after its
		// headers").
		_ = st.out.FlushError()
	}
	if st.admitted != nil {
		// Taken by failFast for a first try that never came: the breaker
		// must not wait for its outcome for ever.
		st.admitted(breaker.ErrIgnored)
		st.admitted = nil
	}
	if b := &st.body; b.ReadCloser != nil && !b.ended {
		// A response whose way to the app was cut by a panic (a
		// ResponseWriter's, a ReverseProxy's): its try ends here, or its
		// breaker would wait for the outcome for ever (a half-open one
		// for good) and its endpoint count it in flight.
		_ = b.Close()
	}
	// A gRPC call its app ended before any answer (serveError's 499, an
	// RST_STREAM) reads as its client's library reports it too: a
	// client's reset at its own deadline is DEADLINE_EXCEEDED, not
	// CANCELLED (docs/grpc.md, "The sidecar's own answers").
	if st.late == 0 && st.errKind == "" && (st.gone || st.out.broken || st.grpc && st.code == statusClientClosed) {
		// The app went away, or its connection broke, before its
		// response ended: not the success its status would say, and not
		// the upstream's failure (the breaker ignored it). The sidecar's
		// own answer keeps its status and kind (errKind).
		st.code = statusClientClosed
		if st.grpc {
			st.grpcStatus = st.grpcCut(true) // not the trailers' status, which the app did not get
		}
	}
	if h.closing.Load() {
		switch {
		case st.code == statusClientClosed:
			// Not the app's leaving: the end of the drain (--drain-timeout)
			// closed its connection, as it ends a tunnel "shutdown". A
			// gRPC call keeps its 499, the app having got no 503: its
			// UNAVAILABLE is in minimesh_grpc_requests_total, and a 503
			// too would count it twice in the error ratios
			// (docs/metrics.md).
			st.errKind = tcpShutdown
			if st.grpc {
				st.grpcStatus = grpcUnavailable
			} else {
				st.code = http.StatusServiceUnavailable
			}
		case st.upgrade && st.code == http.StatusSwitchingProtocols && st.errKind == "":
			// A WebSocket still open at the drain's end was closed by it
			// (its copy's error is the ReverseProxy's): its 101 stays,
			// as a tunnel keeps its 200, with the tunnel's result.
			st.errKind = tcpShutdown
		}
	}
	h.observe(r, st)
	h.logAccess(r, st)
}

// observe records the request's metrics and ends its span, as soon as
// its response headers are known.
func (h *Handler) observe(r *http.Request, st *reqState) {
	if st.headers == 0 {
		st.headers = elapsed(st.start)
	}
	dst := st.dest
	code := st.code
	if st.late != 0 {
		// The app got a status, then a body cut short: for the metrics,
		// whose error rates read the status, it is the failure it was.
		// A gRPC call's status is what its client read from the cut: the
		// metric, the span and the access log say the same. Its HTTP
		// status stays the one the app got: the call's failure is in
		// minimesh_grpc_requests_total, and the error ratios that add
		// that counter's failures to the 5xx would count it twice
		// (docs/metrics.md).
		late, kind := lateFailure(st.late, st.lateErr)
		st.errKind = kind
		if !st.grpc {
			code = late
		} else if !st.grpcTrailed {
			st.grpcStatus = st.grpcCut(false)
		}
	} else if st.errKind == tcpReset && code == http.StatusSwitchingProtocols {
		// An upgraded connection the upstream reset (relayUpgrade): as a
		// body cut short, the failure it was, not the 101's success.
		code = http.StatusBadGateway
	}
	dst.metrics.Observe(r.Method, code, st.headers.Seconds())
	if st.grpc {
		g := grpcFinal(st, code)
		dst.metrics.GRPC(g)
		if st.trace.Span != nil {
			endGRPCSpan(st.trace.Span, g)
		}
	}
	if st.trace.Span != nil {
		endSpan(st.trace.Span, st.code, st.errKind, breakerState(dst))
		st.trace.Span = nil
	}
}

func breakerState(dst *destination) string {
	if dst.breaker == nil {
		return ""
	}
	return dst.breaker.Cached().String()
}

// logAccess writes the access log line, when the response is over.
func (h *Handler) logAccess(r *http.Request, st *reqState) {
	dst := st.dest
	state := breakerState(dst)
	if l := h.cfg.AccessLog; l != nil {
		e := telemetry.Entry{
			Time: st.start, RequestID: st.id, Service: h.cfg.ServiceName, Destination: dst.name,
			Method: r.Method, Path: r.URL.Path, Status: st.code, Duration: time.Since(st.start),
			Attempts: st.attempts, Breaker: state, BytesIn: st.in.n.Load(), BytesOut: st.out.n, Error: st.errKind,
			OriginalDst: st.dial,
		}
		if st.grpc {
			e.GRPCStatus = grpcName(grpcFinal(st, st.code))
		}
		if st.trace.SC.IsValid() {
			e.TraceID, e.SpanID = st.trace.SC.TraceID(), st.trace.SC.SpanID()
		}
		l.Log(&e)
	}
}

// target returns the host:port a request is for: the absolute-form
// request target of a proxy request, else the Host header (an origin-form
// request sent straight to the listener).
func target(r *http.Request) (string, error) {
	host, scheme := r.URL.Host, r.URL.Scheme
	if r.ProtoMajor != 1 && (host != "" || scheme != "") && host != r.Host {
		// An HTTP/2 request names its destination in :authority, and its
		// :path is origin form (RFC 9113 §8.3.1): "http://other/x" there
		// would send it elsewhere than its :authority says. (One whose
		// URL names its Host, as httptest.NewRequest makes them, goes
		// where it says.)
		return "", errors.New(":path " + echo.Quote(r.RequestURI) + " is not a path: an HTTP/2 request names its destination in :authority, its :path is origin-form (RFC 9113 §8.3.1)")
	}
	if host == "" {
		if scheme != "" || r.URL.Opaque != "" {
			// "GET ok:80" or "GET mailto:x@y": not a path, and not an
			// http:// URL either; forwarded, it would reach the upstream as
			// "GET 80".
			return "", errors.New("request target " + echo.Quote(r.RequestURI) + " is neither an http:// URL nor a path")
		}
		host, scheme = r.Host, "http"
	}
	if host == "" {
		return "", errors.New("request names no destination: send an absolute-form request target (HTTP_PROXY) or a Host header")
	}
	switch scheme {
	case "http":
	case "https":
		return "", errors.New("https:// requests must be tunnelled with CONNECT; the sidecar does not originate TLS")
	default:
		return "", errors.New("unsupported scheme " + echo.Quote(scheme))
	}
	if strings.LastIndexByte(host, ':') <= strings.LastIndexByte(host, ']') {
		host = net.JoinHostPort(strings.Trim(host, "[]"), "80")
	}
	h, port, err := net.SplitHostPort(host)
	if err != nil || h == "" {
		return "", errors.New("bad destination " + echo.Quote(host) + ": want host[:port]")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", errors.New("bad port in destination " + echo.Quote(host))
	}
	return host, nil
}

// defaultPortHost returns the host of a request that target names
// host:80 because host has no port, no brackets and no colon: the common
// "http://name/", whose authority then need not be made anew each time.
func defaultPortHost(r *http.Request) (string, bool) {
	host := r.URL.Host
	if host == "" {
		if r.URL.Scheme != "" || r.URL.Opaque != "" {
			return "", false
		}
		host = r.Host
	} else if r.URL.Scheme != "http" || r.ProtoMajor != 1 {
		return "", false // target's to refuse, or to read
	}
	if host == "" || strings.IndexByte(host, ':') >= 0 || strings.IndexByte(host, '[') >= 0 || strings.IndexByte(host, ']') >= 0 {
		return "", false
	}
	return host, true
}

// rewrite points the outbound request at its destination. ReverseProxy
// strips the Forwarded and X-Forwarded-* headers before Rewrite, which
// suits a gateway; a sidecar is the app's own outbound hop, so the app's
// headers are put back as they were and none are added.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	st := stateOf(pr.In.Context())
	if st.upgrade {
		// Its 101's connection is relayed by the handler (relayUpgrade),
		// which must know it.
		pr.Out = pr.Out.WithContext(TraceUpstreamConn(pr.Out.Context()))
	}
	h.hop.add(pr.Out.Header)
	st.point(pr.Out.URL)
	// Rewrite mode re-encodes a query holding ';' or a bad escape,
	// dropping and reordering parameters: the app's bytes go as sent.
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
	for _, h := range forwardedHeaders {
		if v, ok := pr.In.Header[h]; ok {
			pr.Out.Header[h] = v
		}
	}
}

// point aims an outbound request's URL at what the transport dials,
// folded to lower case (poolKey) so that every transport, Go's HTTP/1
// and h2c pools too, keeps one pool for a host whatever its spelling:
// the Host header stays the app's.
func (st *reqState) point(u *url.URL) {
	u.Scheme = "http"
	u.Host = poolKey(st.authority)
	if st.dial != "" {
		u.Host = poolKey(st.dial)
	}
}

var forwardedHeaders = [...]string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// headTimeout is an upgrade request's timeout, which bounds the wait for
// its response's head only: a 101 stops it (modifyResponse), and at the
// same moment either the switch or the timeout wins, never both.
type headTimeout struct {
	t     *time.Timer
	state atomic.Uint32
}

const (
	headWaiting uint32 = iota
	headTimedOut
	headSwitched
)

type headTimeoutKey struct{}

func modifyResponse(resp *http.Response) error {
	ctx := resp.Request.Context()
	st := stateOf(ctx)
	if st.upgrade && resp.StatusCode == http.StatusSwitchingProtocols {
		if g, ok := ctx.Value(headTimeoutKey{}).(*headTimeout); ok {
			g.t.Stop()
			if !g.state.CompareAndSwap(headWaiting, headSwitched) {
				// The timeout fired as the 101 came: the request is over
				// (its context ended, which would close the tunnel at
				// once); the ReverseProxy closes the switched connection
				// and serveError answers the timeout.
				return errTimeout
			}
		}
	}
	dropBody(resp)
	st.answered(resp.StatusCode)
	resp.Header[requestIDKey] = st.idValue()
	return nil
}

// modifyResponse is the ReverseProxy's: an upgrade's 101 is relayed here
// (relayUpgrade), and the ReverseProxy, told errUpgraded, does nothing
// more (serveError): its own splice dropped how the connection ended.
func (h *Handler) modifyResponse(resp *http.Response) error {
	NoSniff(resp.Header, stateOf(resp.Request.Context()).out.Header()) // the ReverseProxy drops a nil value of resp's
	if err := modifyResponse(resp); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		return err
	}
	st := stateOf(resp.Request.Context())
	up := UpstreamConn(resp)
	if !st.upgrade || up == nil {
		return nil // the ReverseProxy's own splice, as before
	}
	h.relayUpgrade(st, resp, up)
	return errUpgraded
}

// errUpgraded tells the ReverseProxy's error handler that the handler
// relayed an upgraded connection and recorded its end: nothing to answer.
var errUpgraded = errors.New("outbound: upgraded connection relayed")

// relayUpgrade passes an upgrade's 101 on to the app and relays the
// switched connection with the tunnels' relay (RelayUpgraded) until it
// ends, and records how: its bytes both ways, and its result as a
// tunnel's (minimesh_tcp_connections_total, and the access log's and the
// span's error when it did not end ok). A reset by the upstream is the
// failure of a response after its headers (minimesh_requests_total counts
// the 502 it was: observe); one by the app is the app's leaving (499).
// The breaker heard of the 101 already, as it hears of a tunnel's
// connect: what happens inside is the peers' business
// (docs/operations.md, "Upgrade requests").
func (h *Handler) relayUpgrade(st *reqState, resp *http.Response, up net.Conn) {
	if ep := st.ep; ep != nil {
		// The switched connection (a WebSocket) is load on its endpoint
		// for as long as it lives, as an opaque connection is
		// (dialTunnel): in flight there until it ends. Its try ended at
		// the 101, so the estimate learned the handshake's time, not the
		// connection's life. Before 2026-12-06 it counted in flight only
		// until the 101: a pod holding a thousand WebSockets looked idle.
		ep.Hold()
		defer ep.Release()
	}
	// The 101 goes out here: the handler's held status must not follow.
	st.out.Bypassed()
	u, err := RelayUpgraded(st.out.ResponseWriter, resp, up, st.dest.metrics.TCP(), h.cfg.TCPIdleTimeout)
	if err != nil {
		abort(up)
		st.code = statusClientClosed
		st.dest.metrics.TCPConnection(tcpReset)
		return
	}
	st.in.n.Add(u.Sent)
	st.out.n += u.Received
	result := u.Result
	if result == tcpReset && h.closing.Load() {
		// The end of the drain closed it (its listener's CloseAll).
		result = tcpShutdown
	}
	st.dest.metrics.TCPConnection(result)
	switch {
	case result == tcpReset && u.ClientFailed:
		st.code = statusClientClosed
	case result != tcpOK:
		st.errKind = result
	}
}

// answered records the upstream's answer as its headers arrive.
func (st *reqState) answered(code int) {
	st.code = code
	st.headers = elapsed(st.start)
}

// serveError answers a request the forwarder could not complete.
func (h *Handler) serveError(w http.ResponseWriter, r *http.Request, err error) {
	if err == errUpgraded {
		return // relayed and recorded (relayUpgrade)
	}
	st := stateOf(r.Context())
	if context.Cause(r.Context()) == errBodyTimeout {
		err = &clientError{&bodyTimeoutError{}}
		closeAfter(w, r)
	} else if errors.Is(err, context.Canceled) && context.Cause(r.Context()) != errTimeout &&
		(r.Context().Err() != nil || st.in.gone()) {
		st.code = statusClientClosed
		return // nobody is listening
	}
	code, kind, body := errorResponse(err, st.dest.name)
	if errors.As(err, new(*clientError)) {
		// What is left of a body the sidecar could not read cannot be
		// told from the next request: the connection ends here.
		closeAfter(w, r)
	}
	if kind == wellknown.ErrorReset || kind == wellknown.ErrorConnectFailure {
		h.log.Debug("upstream failed", "destination", st.dest.name, "error", err, "request_id", st.id)
	}
	if st.grpc && kind == wellknown.ErrorReset {
		if st.atCallDeadline(r.Context()) {
			kind = wellknown.ErrorTimeout
			code = http.StatusGatewayTimeout
			body.Message = "upstream " + st.dest.name + " did not answer within the call's deadline"
		}
	}
	if (context.Cause(r.Context()) == errTimeout || errors.Is(err, errTimeout)) && kind != wellknown.ErrorCircuitOpen {
		code, kind = http.StatusGatewayTimeout, wellknown.ErrorTimeout
		body.Message = "upstream " + st.dest.name + " did not answer within the request timeout"
		if st.in.woken.Load() && r.ProtoMajor == 1 {
			// The timeout cut the app's body short (wake): what is left
			// of it cannot be told from a next request.
			st.out.CloseConn = true
		}
	}
	st.answer(w, code, kind, body)
}

// answer writes the sidecar's own answer to the request and records it
// in the request's state.
func (st *reqState) answer(w http.ResponseWriter, code int, kind string, body errorBody) {
	st.code, st.headers, st.errKind = code, elapsed(st.start), kind
	body.RequestID = st.id
	w.Header()[requestIDKey] = st.idValue()
	if st.grpc {
		// A gRPC client reads the call's status, not the HTTP one.
		st.grpcStatus = grpcAnswer(kind, code)
		st.code = http.StatusOK
		writeGRPCError(w, st.grpcStatus, kind, body)
		return
	}
	writeError(w, code, kind, body)
}

// bufferPool lends ReverseProxy its 32 KiB copy buffers instead of
// allocating one per request.
type bufferPool struct{}

const copyBufSize = 32 << 10

// The pool holds array pointers: putting a slice back would allocate its
// header, an array pointer converts back from the slice for free.
var copyBufs = sync.Pool{New: func() any { return new([copyBufSize]byte) }}

func (bufferPool) Get() []byte { return copyBufs.Get().(*[copyBufSize]byte)[:] }

func (bufferPool) Put(b []byte) {
	if len(b) == copyBufSize {
		copyBufs.Put((*[copyBufSize]byte)(b))
	}
}

var statusTexts = func() (t [600]string) {
	for i := range t {
		t[i] = strconv.Itoa(i)
	}
	return
}()

// statusText is strconv.Itoa without the allocation.
func statusText(code int) string {
	if code >= 0 && code < len(statusTexts) {
		return statusTexts[code]
	}
	return strconv.Itoa(code)
}

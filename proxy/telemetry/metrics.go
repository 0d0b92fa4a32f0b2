// Package telemetry holds the sidecar's Prometheus metrics, named as in
// DESIGN.md ("Metrics"). Labels never carry paths or query strings, and
// the number of distinct destinations is capped.
package telemetry

import (
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/minimesh/minimesh/internal/promtext"
	"github.com/minimesh/minimesh/wellknown"
)

// Other is the destination label of everything past the cap.
const Other = "other"

// DefaultMaxDestinations caps the destination label's values.
const DefaultMaxDestinations = 200

// MaxInbound caps the destination label's values of direction="inbound"
// (the pod's ports), apart from the outbound ones: a client that tries
// every port of the pod cannot use up the outbound label budget.
const MaxInbound = 64

// The values of the direction label.
const (
	Outbound = "outbound"
	Inbound  = "inbound"
)

// Buckets resolve 100 µs to 10 s: the sidecar's own fast-fail answers sit
// at the bottom, slow upstreams at the top.
var Buckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Metrics is the sidecar's metric set and the registry that serves it.
type Metrics struct {
	Registry *promtext.Registry

	requests    *promtext.CounterVec
	duration    *promtext.HistogramVec
	transitions *promtext.CounterVec
	rejected    *promtext.CounterVec
	retries     *promtext.CounterVec
	reloads     *promtext.CounterVec

	tcpConns    *promtext.CounterVec
	tcpSent     *promtext.CounterVec
	tcpReceived *promtext.CounterVec

	spansDropped *promtext.Counter
	ejections    *promtext.CounterVec
	// linesDropped is minimesh_access_log_lines_dropped_total, read
	// from the access log (AccessLogDropped).
	linesDropped *promtext.FuncVec

	// grpc is minimesh_grpc_requests_total (grpc.go).
	grpc *promtext.CounterVec

	// connsOpen and connsRefused are read from the listeners (Listener),
	// connsEvicted from those that share their places (ListenerEvicted).
	connsOpen, connsRefused, connsEvicted *promtext.FuncVec

	maxDest int
	mu      sync.Mutex
	dests   map[string]*Destination
	inbound map[string]*Destination
}

// New registers the metrics, Go runtime and process collectors in a fresh
// registry. They are promtext's, not client_golang's: the sidecar links
// neither client_golang nor the protobuf runtime (docs/metrics.md); the
// series are those client_golang served, name for name.
func New(maxDestinations int) *Metrics {
	if maxDestinations <= 0 {
		maxDestinations = DefaultMaxDestinations
	}
	spansDropped := promtext.NewCounterVec("minimesh_spans_dropped_total",
		"Spans dropped instead of exported: queue full or collector unreachable.")
	m := &Metrics{
		Registry: promtext.NewRegistry(),
		requests: promtext.NewCounterVec("minimesh_requests_total",
			"Requests handled by the sidecar, by direction, destination, method and response code.",
			"direction", "destination", "method", "code"),
		duration: promtext.NewHistogramVec("minimesh_request_duration_seconds",
			"Time from receiving a request to having its response headers (the sidecar's own answers included).",
			Buckets, "direction", "destination"),
		transitions: promtext.NewCounterVec("minimesh_circuit_breaker_transitions_total",
			"Circuit breaker state changes.",
			"destination", "from", "to"),
		rejected: promtext.NewCounterVec("minimesh_circuit_breaker_rejected_total",
			"Requests answered at once because the destination's breaker was open.",
			"destination"),
		retries: promtext.NewCounterVec("minimesh_retries_total",
			"Retries sent, by the condition that caused them.",
			"destination", "reason"),
		reloads: promtext.NewCounterVec("minimesh_policy_reloads_total",
			"Policy loads, by result (success or error).",
			"result"),
		tcpConns: promtext.NewCounterVec("minimesh_tcp_connections_total",
			"Connections relayed as bytes, by how they ended: redirected ones as opaque TCP (TLS, opaque ports, unknown protocols), CONNECT tunnels, and upgraded connections (WebSocket) after their 101.",
			"direction", "destination", "result"),
		tcpSent: promtext.NewCounterVec("minimesh_tcp_sent_bytes_total",
			"Bytes the client sent to the server on connections relayed as bytes (opaque TCP, tunnels, upgraded connections; the app upstream, or a caller into the app), counted as they pass.",
			"direction", "destination"),
		tcpReceived: promtext.NewCounterVec("minimesh_tcp_received_bytes_total",
			"Bytes the server sent to the client on connections relayed as bytes (opaque TCP, tunnels, upgraded connections; the upstream to the app, or the app to a caller), counted as they pass.",
			"direction", "destination"),
		spansDropped: spansDropped.With(),
		connsOpen: promtext.NewGaugeFuncVec("minimesh_connections_open",
			"Client connections open on the listener, tunnels included.", "listener"),
		connsRefused: promtext.NewCounterFuncVec("minimesh_connections_refused_total",
			"Client connections closed as soon as accepted because the listener's connection cap was reached.", "listener"),
		connsEvicted: promtext.NewCounterFuncVec("minimesh_connections_evicted_total",
			"Client connections closed to give their place to a newcomer at the listener's connection cap.", "listener"),
		// At zero from the start, with or without an access log.
		linesDropped: promtext.NewCounterFunc("minimesh_access_log_lines_dropped_total",
			"Access log lines dropped: stdout did not keep up, or was blocked at shutdown.", func() float64 { return 0 }),
		grpc:      newGRPCVec(),
		ejections: newEjectionsVec(),
		maxDest:   maxDestinations,
		dests:     map[string]*Destination{},
		inbound:   map[string]*Destination{},
	}
	build := promtext.NewGaugeVec("minimesh_build_info", "The sidecar's version; always 1.", "version", "goversion")
	build.With(wellknown.Version, runtime.Version()).Set(1)
	m.Registry.MustRegister(m.requests, m.duration, m.transitions, m.rejected, m.retries, m.reloads, spansDropped, build,
		m.tcpConns, m.tcpSent, m.tcpReceived, m.grpc, m.ejections, m.connsOpen, m.connsRefused, m.connsEvicted,
		m.linesDropped, promtext.NewGoCollector(), promtext.NewProcessCollector())
	for _, r := range []string{"success", "error"} {
		m.reloads.With(r)
	}
	return m
}

// PolicyReload counts one policy load.
func (m *Metrics) PolicyReload(ok bool) {
	if ok {
		m.reloads.With("success").Inc()
	} else {
		m.reloads.With("error").Inc()
	}
}

// MaxLabelLen bounds a destination label's length: the longest
// authority a DNS name makes (253 bytes, ":", a 5-digit port), and the
// policy files' bound on strings (docs/operations.md). A longer name, or
// one that is not UTF-8 (which Prometheus refuses in a label, failing the
// whole scrape), is counted as "other" and takes no place under the cap:
// a Host of 60 KB would otherwise be written out in each of the
// destination's series at every scrape.
const MaxLabelLen = 259

// labelable reports whether name may be a destination label of its own.
func labelable(name string) bool {
	return len(name) <= MaxLabelLen && utf8.ValidString(name)
}

// Destination returns the metric handles of one destination, creating
// them on first use; past the cap, and for a name that cannot be a label
// (MaxLabelLen), it returns the shared "other" handles.
func (m *Metrics) Destination(name string) *Destination {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d, ok := m.dests[name]; ok {
		return d
	}
	label := name
	if len(m.dests) >= m.maxDest || !labelable(name) {
		label = Other
		if d, ok := m.dests[Other]; ok {
			return d
		}
	}
	d := &Destination{
		m:         m,
		label:     label,
		direction: Outbound,
		duration:  m.duration.With(Outbound, label),
		rejected:  m.rejected.With(label),
	}
	m.ejections.With(label)
	// Counters exist at zero from the start, so that Prometheus sees a
	// destination's first trip as an increase rather than a new series.
	for _, t := range [][2]string{{"closed", "open"}, {"open", "half-open"}, {"half-open", "closed"}, {"half-open", "open"}} {
		m.transitions.With(label, t[0], t[1])
	}
	m.dests[label] = d
	return d
}

// Inbound returns the metric handles of requests and connections into
// the pod on one of its ports (direction="inbound", destination=port),
// creating them on first use; past MaxInbound ports it returns the shared
// "other" handles. Inbound has no breaker: no breaker series.
func (m *Metrics) Inbound(port string) *Destination {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d, ok := m.inbound[port]; ok {
		return d
	}
	label := port
	if len(m.inbound) >= MaxInbound || !labelable(port) {
		label = Other
		if d, ok := m.inbound[Other]; ok {
			return d
		}
	}
	d := &Destination{m: m, label: label, direction: Inbound, duration: m.duration.With(Inbound, label)}
	m.inbound[label] = d
	return d
}

// Destination holds one destination's metric handles, bound to their
// labels once so that the request path does no label hashing.
type Destination struct {
	m         *Metrics
	label     string
	direction string
	duration  *promtext.Histogram
	rejected  *promtext.Counter

	mu      sync.Mutex
	methods [len(methods) + 1]atomic.Pointer[[]codeCounter]
	// codes are the codes with a label of their own (MaxCodes), copied
	// on write under mu so that a request past the caps finds its class
	// without the lock.
	codes atomic.Pointer[[]int]
	// pairs counts the requests_total children with a code label of
	// their own, across methods (MaxCodePairs); written under mu.
	pairs   atomic.Int32
	classes [len(methods) + 1]codeClassCounters // the codes past the caps
	// retryCodes are the retries_total children of the status codes
	// that caused retries, as methods are requests_total's (Retry).
	retryCodes   atomic.Pointer[[]codeCounter]
	retryClasses codeClassCounters // the codes past MaxCodes
	tcp          atomic.Pointer[TCPBytes]
	grpc         [len(GRPCCodes)]atomic.Pointer[grpcCounter]
}

// TCPBytes are a destination's opaque TCP byte counters.
type TCPBytes struct{ Sent, Received *promtext.Counter }

// TCP returns the destination's byte counters of opaque TCP, made on its
// first connection (HTTP-only destinations get no such series).
func (d *Destination) TCP() *TCPBytes {
	if t := d.tcp.Load(); t != nil {
		return t
	}
	t := &TCPBytes{Sent: d.m.tcpSent.With(d.direction, d.label), Received: d.m.tcpReceived.With(d.direction, d.label)}
	d.tcp.CompareAndSwap(nil, t)
	return d.tcp.Load()
}

// TCPConnection counts one opaque TCP connection that ended with result
// ("ok", or the kind of its failure).
func (d *Destination) TCPConnection(result string) {
	d.m.tcpConns.With(d.direction, d.label, result).Inc()
}

type codeCounter struct {
	code int
	c    *promtext.Counter
}

// Label is the destination label value ("other" past the cap).
func (d *Destination) Label() string { return d.label }

// Observe records one finished request.
func (d *Destination) Observe(method string, code int, seconds float64) {
	d.duration.Observe(seconds)
	d.counter(method, code).Inc()
}

// MaxCodes bounds the distinct code labels of one destination: an
// upstream chooses its status codes, and one answering 100, 101, ... 999
// in turn would otherwise make 900 series per method. A code outside
// 100–599 (RFC 9110 §15: no valid status is) is counted as code="other";
// past MaxCodes distinct codes, a further one is counted as its class,
// "1xx" to "5xx", which code=~"5.." still matches.
const MaxCodes = 32

// MaxCodePairs bounds the (method, code) pairs of one destination's
// requests_total that have a code label of their own, across its
// methods: MaxCodes alone let the app's methods multiply the upstream's
// codes, 10 method labels × 38 codes per destination. Past it a
// further pair's code is counted as its class, as past MaxCodes, so a
// destination has at most MaxCodePairs + 10 × 6 (five classes and
// "other" per method label) = 124 series of requests_total
// (docs/metrics.md).
const MaxCodePairs = 64

// codeClassCounters are the children of the codes past the caps, by
// class; made under Destination.mu, read without it.
type codeClassCounters [len(codeClasses)]atomic.Pointer[promtext.Counter]

// counter finds the requests_total child for (method, code) in a short
// copy-on-write list: a destination sees few distinct codes, so a scan
// beats hashing four label values on every request. The list holds the
// codes with a label of their own (at most MaxCodes) and, as code 0, the
// codes outside 100–599: it stays short whatever an upstream sends. A
// code past the caps is counted under its class, which, once made, is
// found without the lock too: a destination past MaxCodePairs may see
// such codes on many of its requests.
func (d *Destination) counter(method string, code int) *promtext.Counter {
	mi := methodIndex(method)
	key := codeKey(code)
	if c := lookupCode(&d.methods[mi], key); c != nil {
		return c
	}
	if d.pastCaps(key, true) {
		if c := d.classes[mi][key/100-1].Load(); c != nil {
			return c
		}
	}
	return d.addCode(&d.methods[mi], &d.classes[mi], true, key, func(label string) *promtext.Counter {
		return d.m.requests.With(d.direction, d.label, methodLabel(mi), label)
	})
}

// codeKey is a code's key in a code list: the code, or 0 for one outside
// 100–599 (code="other").
func codeKey(code int) int {
	if code < 100 || code > 599 {
		return 0
	}
	return code
}

// lookupCode is the counter of key in list, nil if it has none.
func lookupCode(list *atomic.Pointer[[]codeCounter], key int) *promtext.Counter {
	if p := list.Load(); p != nil {
		for _, cc := range *p {
			if cc.code == key {
				return cc.c
			}
		}
	}
	return nil
}

// pastCaps reports whether a code not yet in a list is to be counted as
// its class: past MaxCodePairs (for requests, pairs), or new to the
// destination past MaxCodes. Code 0 ("other") never is.
func (d *Destination) pastCaps(key int, pairs bool) bool {
	if key == 0 {
		return false
	}
	if pairs && d.pairs.Load() >= MaxCodePairs {
		return true
	}
	codes := d.codes.Load()
	if codes == nil {
		return false
	}
	return len(*codes) >= MaxCodes && !slices.Contains(*codes, key)
}

// addCode is the way of a code not in list (requests' or retries'),
// under d.mu: a code gets a label of its own, made by with and added to
// list, while the destination has fewer than MaxCodes codes, counted by
// its requests and retries alike, and, for requests (pairs), fewer than
// MaxCodePairs pairs; past them it is counted as its class, kept in
// classes.
func (d *Destination) addCode(list *atomic.Pointer[[]codeCounter], classes *codeClassCounters, pairs bool,
	key int, with func(label string) *promtext.Counter) *promtext.Counter {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := lookupCode(list, key); c != nil {
		return c
	}
	label := Other
	if key != 0 {
		if d.pastCaps(key, pairs) {
			cl := &classes[key/100-1]
			if c := cl.Load(); c != nil {
				return c
			}
			c := with(codeClasses[key/100-1])
			cl.Store(c)
			return c
		}
		var codes []int
		if p := d.codes.Load(); p != nil {
			codes = *p
		}
		if !slices.Contains(codes, key) {
			next := append(slices.Clip(codes), key)
			d.codes.Store(&next)
		}
		if pairs {
			d.pairs.Add(1)
		}
		label = strconv.Itoa(key)
	}
	c := with(label)
	var next []codeCounter
	if p := list.Load(); p != nil {
		next = append(next, *p...)
	}
	next = append(next, codeCounter{key, c})
	list.Store(&next)
	return c
}

// codeClasses are the code labels of the codes past MaxCodes.
var codeClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// Rejected counts one request refused by an open breaker.
func (d *Destination) Rejected() { d.rejected.Inc() }

// Retry counts one retry and why it was sent. A reason that is a status
// code, which the upstream chose, gets the label its code has in
// minimesh_requests_total (MaxCodes): an upstream answering 500, 501, ...
// 599 in turn made 100 retry series per destination. The other reasons
// are the sidecar's own few names.
func (d *Destination) Retry(reason string) {
	code, ok := statusCode(reason)
	if !ok {
		d.m.retries.With(d.label, reason).Inc()
		return
	}
	key := codeKey(code)
	c := lookupCode(&d.retryCodes, key)
	if c == nil && d.pastCaps(key, false) {
		c = d.retryClasses[key/100-1].Load()
	}
	if c == nil {
		// A retry's series is per destination, not per method: the
		// pairs cap is requests_total's alone.
		c = d.addCode(&d.retryCodes, &d.retryClasses, false, key, func(label string) *promtext.Counter {
			return d.m.retries.With(d.label, label)
		})
	}
	c.Inc()
}

// statusCode is the code of a reason that is one, three digits ("503").
func statusCode(reason string) (int, bool) {
	if len(reason) != 3 {
		return 0, false
	}
	code := 0
	for i := range 3 {
		c := reason[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		code = code*10 + int(c-'0')
	}
	return code, true
}

// Transition counts one breaker state change.
func (d *Destination) Transition(from, to string) {
	d.m.transitions.With(d.label, from, to).Inc()
}

// methods are the label values of the method label; anything else is
// "other", so that a client cannot mint label values.
var methods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

func methodIndex(m string) int {
	for i, x := range methods {
		if m == x {
			return i
		}
	}
	return len(methods)
}

func methodLabel(i int) string {
	if i < len(methods) {
		return methods[i]
	}
	return Other
}

// Listener exposes one listener's connections: minimesh_connections_open
// and minimesh_connections_refused_total, labelled listener=name. Both
// are read from the listener's own atomic counters at scrape time, so a
// connection costs no metric update.
func (m *Metrics) Listener(name string, open func() int64, refused func() uint64) {
	m.connsOpen.Set(func() float64 { return float64(open()) }, name)
	m.connsRefused.Set(func() float64 { return float64(refused()) }, name)
}

// AccessLogDropped exposes minimesh_access_log_lines_dropped_total, read
// from dropped (AccessLog.Dropped) at scrape time: a dropped line costs
// no metric update.
func (m *Metrics) AccessLogDropped(dropped func() int64) {
	m.linesDropped.Set(func() float64 { return float64(dropped()) })
}

// ListenerEvicted exposes minimesh_connections_evicted_total{listener=name}:
// the connections a listener that shares its places (the admin and
// inbound ones, connlimit's Share) closed to give their place to a
// newcomer at its cap. Apart from the refusals, so that the cap at work
// shows as such; read at scrape time, as Listener's.
func (m *Metrics) ListenerEvicted(name string, evicted func() uint64) {
	m.connsEvicted.Set(func() float64 { return float64(evicted()) }, name)
}

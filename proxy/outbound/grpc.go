package outbound

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/nobody"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/wellknown"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// This file is what the outbound path knows of gRPC (docs/grpc.md): a
// call's status is grpc-status (in the trailers, or in the headers of a
// trailers-only response), and it counts for the breaker, retries and
// metrics as its HTTP equivalent; the sidecar's own answers to a gRPC
// client are gRPC answers.

// isGRPC reports whether an HTTP/2 request is a gRPC call: its
// content-type is application/grpc or application/grpc+codec
// (grpc-web, which travels over HTTP/1.1 with its status in the body, is
// not).
func isGRPC(h http.Header) bool {
	v := h["Content-Type"]
	if len(v) == 0 {
		return false
	}
	ct := v[0]
	const p = "application/grpc"
	if len(ct) < len(p) || !strings.EqualFold(ct[:len(p)], p) {
		return false
	}
	return len(ct) == len(p) || ct[len(p)] == '+' || ct[len(p)] == ';'
}

// gRPC status codes (google.golang.org/grpc/codes), by their value.
const (
	grpcOK                 = 0
	grpcCanceled           = 1
	grpcUnknown            = 2
	grpcInvalidArgument    = 3
	grpcDeadlineExceeded   = 4
	grpcNotFound           = 5
	grpcAlreadyExists      = 6
	grpcPermissionDenied   = 7
	grpcResourceExhausted  = 8
	grpcFailedPrecondition = 9
	grpcAborted            = 10
	grpcOutOfRange         = 11
	grpcUnimplemented      = 12
	grpcInternal           = 13
	grpcUnavailable        = 14
	grpcDataLoss           = 15
	grpcUnauthenticated    = 16
)

// grpcNames are the codes' names, the values of the metrics' grpc_code
// label.
var grpcNames = telemetry.GRPCCodes

// grpcHTTP is each code's HTTP equivalent, as Envoy maps them
// (Grpc::Utility::grpcToHttpStatus): what failOn and retryOn see.
var grpcHTTP = [...]int{200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401}

// grpcStatusOf parses a grpc-status value; -1 when there is none,
// UNKNOWN for one that is not a number (grpcStatusIn).
func grpcStatusOf(v string) int {
	if v == "" {
		return -1
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return grpcUnknown
	}
	return grpcCodeOf(n)
}

// grpcCodeOf is the code a grpc-go client reads from a grpc-status
// number n (32 bits): codes.Code(uint32(n)), also beyond 16, where it
// shows Code(17) and never UNKNOWN. Such a code is the client's error:
// an HTTP 500 for failOn (grpcEquivalent), no grpc- condition of a
// policy, UNKNOWN in the metric (telemetry's 17 names keep its labels
// bounded), Code(n) in the span and the access log (grpcName). On a
// 32-bit platform a value past the int's range (a negative one on the
// wire) is kept as the largest int, which is no code either.
func grpcCodeOf(n int64) int {
	if c := int(uint32(n)); c >= 0 {
		return c
	}
	return math.MaxInt32
}

// grpcStatusIn is the status a gRPC client reads from the grpc-status
// fields vs of trailers (or of a trailers-only answer's headers), as
// grpc-go reads them (operateHeaders, internal/transport/http2_client.go):
// each field overwrites the one before, so the last one's; UNKNOWN when
// there is none, and at once for one that is not a number (ParseInt,
// 32 bits, as grpc-go parses it), wherever it is. grpc-java's
// Metadata.get takes the last value too. A number that is no code is
// kept (grpcCodeOf).
func grpcStatusIn(vs []string) int {
	if len(vs) == 0 {
		return grpcUnknown
	}
	for _, v := range vs {
		if _, err := strconv.ParseInt(v, 10, 32); err != nil {
			return grpcUnknown
		}
	}
	return grpcStatusOf(vs[len(vs)-1])
}

// grpcContentType reports whether a response is a gRPC answer to its
// client: one of its content-type fields is application/grpc, or that
// followed by '+' or ';', compared exactly (grpc-go's
// grpcutil.ContentSubtype, applied to each field by operateHeaders).
// Any other answer, a 200 included, is read from its HTTP status
// (grpcFromHTTP: a 200's as UNKNOWN), whatever grpc-status it carries;
// a gRPC answer's HTTP status is not read at all.
func grpcContentType(h http.Header) bool {
	const p = "application/grpc"
	for _, ct := range h["Content-Type"] {
		if len(ct) >= len(p) && ct[:len(p)] == p && (len(ct) == len(p) || ct[len(p)] == '+' || ct[len(p)] == ';') {
			return true
		}
	}
	return false
}

// grpcTrailed reports whether a response's trailers hold a field, so
// that the app's HTTP/2 server sends them as a HEADERS frame: its client
// then reads the status in them (grpcStatusIn), UNKNOWN without one;
// with none, the stream ends on a DATA frame, which grpc-go reads as
// INTERNAL ("server closed the stream without sending trailers").
func grpcTrailed(tr http.Header) bool {
	for _, v := range tr {
		if len(v) > 0 {
			return true
		}
	}
	return false
}

// grpcEquivalent is the HTTP status a gRPC status counts as.
func grpcEquivalent(code int) int {
	if code >= 0 && code < len(grpcHTTP) {
		return grpcHTTP[code]
	}
	return http.StatusInternalServerError
}

// grpcFromHTTP is the code a gRPC client reads from an HTTP status with
// no grpc-status (the gRPC spec's "HTTP to gRPC Status Code Mapping").
func grpcFromHTTP(code int) int {
	switch code {
	case http.StatusOK:
		return grpcUnknown // a 200 without grpc-status is a broken answer
	case http.StatusBadRequest:
		return grpcInternal
	case http.StatusUnauthorized:
		return grpcUnauthenticated
	case http.StatusForbidden:
		return grpcPermissionDenied
	case http.StatusNotFound:
		return grpcUnimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return grpcUnavailable
	case statusClientClosed:
		return grpcCanceled
	}
	return grpcUnknown
}

// grpcName is a code's name for the access log and the span's status:
// a code beyond the 17 is named as grpc-go names it, Code(17).
func grpcName(code int) string {
	if code >= 0 && code < len(grpcNames) {
		return grpcNames[code]
	}
	return "Code(" + strconv.Itoa(code) + ")"
}

// grpcAnswer is the gRPC status of the sidecar's own answer of kind.
func grpcAnswer(kind string, code int) int {
	switch kind {
	case wellknown.ErrorCircuitOpen, wellknown.ErrorConnectFailure, wellknown.ErrorReset, wellknown.ErrorOverloaded:
		return grpcUnavailable
	case wellknown.ErrorTimeout:
		return grpcDeadlineExceeded
	case wellknown.ErrorForbidden:
		return grpcPermissionDenied
	}
	if code == http.StatusRequestEntityTooLarge || code == http.StatusRequestHeaderFieldsTooLarge {
		return grpcResourceExhausted
	}
	if code == http.StatusRequestTimeout {
		return grpcDeadlineExceeded
	}
	return grpcInternal
}

// writeGRPCError answers a gRPC call the sidecar could not forward: a
// trailers-only response (HTTP 200, the status in the headers, no body),
// which every gRPC client reads as the call's status.
func writeGRPCError(w http.ResponseWriter, status int, kind string, b errorBody) {
	h := w.Header()
	h.Set(wellknown.HeaderError, kind)
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(status))
	h.Set("Grpc-Message", grpcEncodeMessage("minimesh: "+b.Message))
	if b.RetryAfterSeconds > 0 {
		h.Set("Retry-After", strconv.Itoa(b.RetryAfterSeconds))
	}
	w.WriteHeader(http.StatusOK)
}

// grpcEncodeMessage percent-encodes a grpc-message (gRPC over HTTP/2:
// every byte outside printable ASCII, and '%').
func grpcEncodeMessage(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c > '~' || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c > '~' || c == '%' {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// maxGRPCTimeout is the largest grpc-timeout taken: the header allows
// 99999999 hours, a context needs no more than this.
const maxGRPCTimeout = 100 * 24 * time.Hour

// parseGRPCTimeout reads a grpc-timeout value (at most 8 digits and a
// unit: H, M, S, m, u, n); false if it is not one.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	var n int64
	for i := 0; i < len(v)-1; i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if d := time.Duration(n); d > maxGRPCTimeout/unit {
		return maxGRPCTimeout, true
	}
	return time.Duration(n) * unit, true
}

// formatGRPCTimeout writes d as a grpc-timeout value, in milliseconds
// when that fits in 8 digits, else in seconds, rounded up as grpc-go
// rounds its own (a try's time left is never told as 0, which is no
// time at all, and at most 1 ms more than there is: within
// grpcDeadlineSlack).
func formatGRPCTimeout(d time.Duration) string {
	ms := (d + time.Millisecond - 1) / time.Millisecond
	if ms < 1e8 {
		return strconv.FormatInt(int64(max(ms, 1)), 10) + "m"
	}
	return strconv.FormatInt(int64(min((d+time.Second-1)/time.Second, 1e8-1)), 10) + "S"
}

// grpcMethod splits a gRPC path, /package.Service/Method, into the RPC
// semantic conventions' rpc.service and rpc.method; false if the path is
// not of that form.
func grpcMethod(path string) (service, method string, ok bool) {
	if len(path) < 4 || path[0] != '/' {
		return "", "", false
	}
	i := strings.LastIndexByte(path, '/')
	if i <= 1 || i == len(path)-1 {
		return "", "", false
	}
	return path[1:i], path[i+1:], true
}

// grpcSpanAttrs are a gRPC call's attributes of the OpenTelemetry RPC
// semantic conventions known at its start.
func grpcSpanAttrs(path string) []attribute.KeyValue {
	attrs := []attribute.KeyValue{attribute.String("rpc.system", "grpc")}
	if s, m, ok := grpcMethod(path); ok {
		attrs = append(attrs, attribute.String("rpc.service", s), attribute.String("rpc.method", m))
	}
	return attrs
}

// grpcTimeout is the time a gRPC call gets: the client's grpc-timeout,
// capped by the policy's timeout (0: none); client says it is the
// client's own, whose library ends the call at that deadline itself
// (grpcCut). When the policy's is the shorter one, the upstream is told
// it in grpc-timeout, so that it stops working on a call the sidecar
// will have answered. own is the client's grpc-timeout as it came (0:
// none, or not one), which that rewrite replaces in h.
func grpcTimeout(h http.Header, policy time.Duration) (d, own time.Duration, client bool) {
	if v := h["Grpc-Timeout"]; len(v) > 0 {
		own, _ = parseGRPCTimeout(v[0])
		if own > 0 && (policy <= 0 || own <= policy) {
			return own, own, true
		}
	}
	if policy > 0 {
		h.Set("Grpc-Timeout", formatGRPCTimeout(policy))
	}
	return policy, own, false
}

// callTimeout is grpcTimeout, keeping the client's own grpc-timeout
// (ownTimeout) even when the policy's shorter one replaces it upstream:
// a client whose deadline came after the policy's timeout (its stream
// held open by its own flow control, say) and that then ends the call
// itself reads DEADLINE_EXCEEDED, not CANCELLED (grpcCut).
func (st *reqState) callTimeout(h http.Header, policy time.Duration) (time.Duration, bool) {
	d, own, client := grpcTimeout(h, policy)
	st.ownTimeout = own
	return d, client
}

// grpcDeadline is when a gRPC call's time is up: its client's deadline
// (callDeadline), else its request's (the policy's timeout, ctx's).
func (st *reqState) grpcDeadline(ctx context.Context) (time.Time, bool) {
	if !st.callDeadline.IsZero() {
		return st.callDeadline, true
	}
	return ctx.Deadline()
}

// setTryTimeout tells the upstream of a gRPC call's try, in its
// grpc-timeout, the time the call has left: the client's deadline or the
// policy's timeout, whichever comes first (ctx is the request's). The
// client's own value, sent again on a retry, would let the upstream work
// past the caller's deadline, on a call already answered (docs/grpc.md,
// "Deadlines"). Not perTryTimeout: it bounds a try only up to its
// response's headers (docs/policy.md), and a grpc-go server sends those
// with its first message, so told it the server ended a healthy stream
// there, after its headers, as a failure (before 2026-12-07); a try that
// runs out of it is cancelled by the sidecar (RST_STREAM CANCEL), which
// the server sees. A call with no limit keeps what the client sent.
func (st *reqState) setTryTimeout(h http.Header, ctx context.Context) {
	if dl, has := st.grpcDeadline(ctx); has {
		h["Grpc-Timeout"] = []string{formatGRPCTimeout(dl.Sub(since(st.start)))}
	}
}

// grpcCut is the status a gRPC client reads from a call whose stream
// ended with no trailers, after its headers: the app's own reset
// (cancelled), or the sidecar's abort of a response that failed
// upstream. An app that reset its stream at or past its own deadline
// (its grpc-timeout, whether or not it was the call's time) did so as
// its library ended the call DEADLINE_EXCEEDED; with time left, it
// cancelled (CANCELLED). The sidecar's abort is a reset too: net/http's
// HTTP/2 server ends a handler's stream early only with RST_STREAM
// INTERNAL_ERROR (a panic, or a write deadline; no CANCEL, which grpc-go
// would read as DEADLINE_EXCEEDED once its deadline had passed), read
// as INTERNAL. At the client's deadline, when it is the call's time,
// the client reads DEADLINE_EXCEEDED instead: the sidecar's reset comes
// no sooner than its timer, grpcDeadlineSlack after that deadline
// (holdCut holds an upstream's there), by when the client's own timer
// has ended the call.
func (st *reqState) grpcCut(cancelled bool) int {
	if st.atClientDeadline() {
		return grpcDeadlineExceeded
	}
	if cancelled {
		if st.ownTimeout > 0 && !since(st.start).Add(min(grpcCancelSlack, st.ownTimeout/5)).Before(st.start.Add(st.ownTimeout)) {
			return grpcDeadlineExceeded
		}
		return grpcCanceled
	}
	return grpcInternal
}

// grpcCancelSlack: an app's reset this close to its own deadline (or a
// fifth of its deadline, if less: a hedged call's losers, cancelled with
// half of 40 ms left, are cancels) is its library's DEADLINE_EXCEEDED, not
// a cancel. Wider than
// grpcDeadlineSlack because the sidecar's deadline runs from when its
// handler began (st.start), which comes after the app sent the call, by
// as much as a loaded sidecar's scheduling delays: the same reset, sent
// at the app's deadline, reached it more than 10 ms before its own
// reckoning of that deadline, and a call that ran out of time was
// recorded CANCELLED, which error ratios leave out
// (TestGRPCCutAtOwnDeadline).
const grpcCancelSlack = 50 * time.Millisecond

// holdCut holds the sidecar's reset of a gRPC call cut in the middle of
// a message at its client's deadline (an upstream's reset within
// grpcDeadlineSlack before it, taken for the deadline's) until the
// client's own timer has ended the call or the sidecar's would have:
// req (the request's context) ends at the client's reset or at the
// sidecar's timer, grpcDeadlineSlack after the deadline. Sent at once,
// the reset could reach a client whose deadline had not yet passed,
// which reads it as INTERNAL, where the sidecar records the deadline's
// DEADLINE_EXCEEDED (grpcCut). A wait of at most twice the slack, for a
// call whose upstream is gone anyway.
func (st *reqState) holdCut(req context.Context) {
	if _, timed := req.Deadline(); timed && st.atClientDeadline() {
		<-req.Done()
	}
}

// endGRPC ends a gRPC call whose upstream failed (class, err) after the
// answer's headers and whole messages went to the app: with trailers,
// the status a client reads is the cause's, as the sidecar answers
// before the headers (DEADLINE_EXCEEDED for a timeout, UNAVAILABLE for
// a reset, as Linkerd's proxy and grpc-go's own transport read a stream
// interrupted by a transport error), and the metric, span and log
// record that. A reset instead would be read as INTERNAL, even at the
// client's own deadline (grpc-go maps RST_STREAM INTERNAL_ERROR to
// INTERNAL). In the middle of a message trailers would not help: a
// client reads a message cut short as INTERNAL whatever follows
// (docs/grpc.md, "The sidecar's own answers").
func (st *reqState) endGRPC(class policy.Class, err error) {
	kind := wellknown.ErrorReset
	msg := "upstream " + st.dest.name + "'s answer failed after its headers: " + err.Error()
	code := 0
	if class == classAppFault {
		// The app's own request failed (upstreamBody.appFault): its
		// status is the one the sidecar answers before the headers.
		var b errorBody
		code, kind, b = errorResponse(err, st.dest.name)
		msg = b.Message
	} else if class == policy.ClassTimeout {
		kind = wellknown.ErrorTimeout
		msg = "upstream " + st.dest.name + " did not answer in time: the policy's timeout ended the call"
		if st.atClientDeadline() {
			msg = "upstream " + st.dest.name + " did not finish its answer within the call's deadline"
		}
	}
	st.grpcStatus, st.grpcTrailed = grpcAnswer(kind, code), true
	// The server's own writer: the ReverseProxy sends no trailers of its
	// own for a body that failed, and the upstream's announced ones, if
	// any, stay empty.
	h := st.out.ResponseWriter.Header()
	h[http.TrailerPrefix+"Grpc-Status"] = []string{strconv.Itoa(st.grpcStatus)}
	h[http.TrailerPrefix+"Grpc-Message"] = []string{grpcEncodeMessage("minimesh: " + msg)}
	h[http.TrailerPrefix+wellknown.HeaderError] = []string{kind}
}

// HTTP/2 limits of the sidecar's connections (docs/grpc.md, "Limits").
const (
	// H2MaxReceiveBuffer bounds the flow-control window of one app
	// connection to the sidecar and of one stream on it (ServerHTTP2):
	// the request bodies upstreams do not take hold at most this much
	// of an app connection in the sidecar.
	H2MaxReceiveBuffer = 1 << 20
	// H2UpstreamStreamWindow bounds the flow-control window of one
	// stream to an upstream: an app that reads its answer slowly, or not
	// at all, holds at most this much of it in the sidecar. HTTP/2's own
	// initial window: 400 stalled streams took the heap to 167.5 MB at
	// 256 KiB, over the chart's 128Mi, and to 92.5 MB at 64 KiB (56.7 MB
	// with the 1 MiB connection window that froze calls); a stream still
	// moves 64 MiB/s at a millisecond's round trip.
	H2UpstreamStreamWindow = 64 << 10
	// H2UpstreamConnWindow is the window of one upstream connection,
	// shared by its streams. Go's transport returns window, the
	// connection's as the stream's, only as the sidecar reads a body,
	// which it does no faster than the app takes the answer: a stalled
	// stream keeps its share for as long as it stalls. Equal to the
	// stream's window, two stalled streams from two app connections froze
	// every call to their destination; this leaves room for
	// H2MaxConcurrentStreams stalled streams (Go's server's own limit of
	// streams per connection), and bounds what a connection holds unread
	// at 16 MiB (docs/grpc.md, "Limits"). Go accepts windows up to
	// 2^31-1 here, whatever its documentation says of 4 MiB;
	// TestH2UpstreamWindows reads what the upstream is told.
	H2UpstreamConnWindow = H2MaxConcurrentStreams * H2UpstreamStreamWindow
	// H2PingTimeout closes a connection that answers no PING within it,
	// sent after H2ReadIdleTimeout without a frame (an app's connection)
	// or H2UpstreamPingAfter (an upstream's): a dead peer otherwise holds
	// its streams until the request timeout.
	H2ReadIdleTimeout = 30 * time.Second
	H2PingTimeout     = 15 * time.Second
	// H2UpstreamPingAfter is the upstream's: gRPC servers take a client's
	// PING sooner than 5 minutes after its last as abuse (grpc-go's, Java's
	// and C++'s default keepalive enforcement, permitKeepAliveTime), and
	// the third such strike ends the connection with GOAWAY
	// ENHANCE_YOUR_CALM "too_many_pings", every call on it failing
	// UNAVAILABLE: at 30 s a quiet call (a watch, a long poll) died after
	// about 2 minutes (before 2026-12-07). Envoy and grpc-go's own client
	// send no PING unless told to. Between PINGs, TCP keepalive alone does
	// not find a peer whose host is gone: Linux sends no probe while data
	// is unacknowledged, so a call sent on such a connection waited about
	// 5 min 25 s; the connection's TCP_USER_TIMEOUT
	// (h2UpstreamUserTimeout, dial.go) ends it after 30 s.
	H2UpstreamPingAfter = 5*time.Minute + 10*time.Second
)

// newH2CTransport is the upstream transport of HTTP/2 clients' requests:
// HTTP/2 with prior knowledge (h2c) over the sidecar's dialer, one
// multiplexed connection per destination, opening another when the
// upstream's SETTINGS_MAX_CONCURRENT_STREAMS is reached.
//
// One dial at a time per destination (MaxConnsPerHost 1: the requests
// that find no room wait for that dial and share its connection). Go's
// transport otherwise dials for every request that finds the connections
// full (ErrNoCachedConn, golang/go#16582), all at once, and closes the
// connections that turn out unneeded: 1,000 concurrent calls to a new
// destination dialled 700 to 1,212 connections and kept 5 to 9; now 2 to
// 6, of which 2 to 4 are kept (TestH2ConcurrentCallsNoFalseReset). A dial
// that fails fails the calls that waited for it (boundDials). The limit
// counts dials and the entries of Go's HTTP/1 idle list, not HTTP/2
// connections, which stay as many as the streams need. Waiting on a full
// connection instead (StrictMaxConcurrentRequests, as grpc-go's and
// Linkerd's clients do) hangs in Go 1.26 once more calls wait than the
// upstream's limit: the waiting calls' reservations count against it.
func newH2CTransport(dial func(context.Context, string, string) (net.Conn, error)) *http.Transport {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	// No MaxIdleConns (maxIdleTotal, fastpath.go): Go keeps HTTP/2
	// connections in its HTTP/2 pool, which has no bound of its own, and
	// MaxIdleConns would drop only their entries in the HTTP/1 idle list,
	// each then a dial whose connection that pool closes as one too many.
	// They are one per destination, multiplexed, closed after
	// IdleConnTimeout idle.
	t := &http.Transport{
		Proxy:                  nil, // never the sidecar's own HTTP_PROXY: that would loop
		DialContext:            boundDials(dial),
		MaxConnsPerHost:        1,
		Protocols:              &p,
		IdleConnTimeout:        90 * time.Second,
		DisableCompression:     true,
		MaxResponseHeaderBytes: MaxHeaderBytes,
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerConnection: H2UpstreamConnWindow,
			MaxReceiveBufferPerStream:     H2UpstreamStreamWindow,
			SendPingTimeout:               H2UpstreamPingAfter,
			PingTimeout:                   H2PingTimeout,
		},
	}
	awaitSettings(t, h2SettingsWait)
	return t
}

// h2Tries is the upstream HTTP/2 transport with each try's dials
// bounded (boundDials). Go's transport dials again, with no bound and no
// pause, for a request whose stream the upstream reset with
// PROTOCOL_ERROR (it takes that for a broken connection, golang/go#47635,
// and its http.Transport redials whenever no connection is cached): one
// GET to such an upstream opened 3,351 connections in a second. Each turn
// of that loop loses the connection the request was on (marked not to be
// reused, it closes as its last stream ends); a dial that races other
// requests for the room of connections that are full loses none. A try
// that lost maxLostPerTry of the connections it was placed on is dialled
// no more and fails as the reset it is, for the try loop to judge
// (docs/grpc.md, "Retries"): at most 3 dials of its own, also with 200
// calls at once to such an upstream (TestH2ResetRedialConcurrent).
// Counting dials alone refused a try's third also in that race, and
// failed it as a false PROTOCOL_ERROR reset, a 502 and a breaker failure,
// when hundreds of calls went at once to a new destination
// (TestH2ConcurrentCallsNoFalseReset).
//
// The try's state is its context, which also carries the request's
// ClientTrace with hooks of its own: GotConn (the connections it is
// placed on), WroteHeaders (the stream it wrote on each, h2Conn.sent) and
// Got1xxResponse, the ReverseProxy's bounded as informational bounds it
// on the HTTP/1 path. One context for both roles: the context and the
// three hooks are four allocations, and the request's copy one, where
// informational's wrapper and the try's made six.
type h2Tries struct{ http.RoundTripper }

func (t h2Tries) RoundTrip(req *http.Request) (*http.Response, error) {
	c := &h2Try{Context: req.Context(), epoch: dialEpoch.Load()}
	if old := httptrace.ContextClientTrace(c.Context); old != nil {
		c.t = *old // the ReverseProxy's, always
	} else {
		c.Context = httptrace.WithClientTrace(c.Context, &c.t)
	}
	c.nextConn, c.nextWrote = c.t.GotConn, c.t.WroteHeaders
	c.t.GotConn, c.t.WroteHeaders = c.gotConn, c.wroteHeaders
	if c.t.Got1xxResponse != nil {
		c.next1xx = c.t.Got1xxResponse
		c.t.Got1xxResponse = c.got1xx
	}
	r := req.WithContext(c)
	if r.Body != nil && !nobody.Is(r.Body) {
		c.body.rc = r.Body
		r.Body = &c.body // read again after a close (resendBody)
	}
	return t.RoundTripper.RoundTrip(r)
}

// CloseIdleConnections closes the transport's idle connections, as the
// sidecar stops (Handler.CloseIdleConnections).
func (t h2Tries) CloseIdleConnections() {
	if c, ok := t.RoundTripper.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// h2Try is a try's context: the last connections its request was placed
// on, the stream it wrote on each, and its dials (boundDials), and its
// ClientTrace t, which tells the first two.
type h2Try struct {
	context.Context
	t         httptrace.ClientTrace
	nextConn  func(httptrace.GotConnInfo) // the request's own GotConn, if any
	nextWrote func()                      // and WroteHeaders
	next1xx   func(int, textproto.MIMEHeader) error
	n1xx      int // the 1xx responses passed on
	// on holds the last len(on) connections Go's transport placed the
	// request on, in turn (placed counts them); the try's goroutine
	// writes them, boundDials reads them, from the dial's goroutine.
	on [maxLostPerTry + 2]atomic.Pointer[h2Conn]
	// wrote[i] is the stream the try's request went out on on[i] (its
	// HEADERS written), 0 if none did.
	wrote  [maxLostPerTry + 2]atomic.Uint32
	placed atomic.Uint32
	dial   atomic.Int32 // dials
	// dialled is the last connection the try dialled, not yet judged;
	// wasted counts those that carried no stream, the try's or another's
	// (boundDials).
	dialled atomic.Pointer[h2Conn]
	wasted  atomic.Int32
	// epoch is dialEpoch when the try began: a dial to its destination
	// that failed since, one it waited for, fails it too (boundDials).
	epoch uint64
	body  resendBody // the request's body, as the transport gets it
}

func (c *h2Try) Value(k any) any {
	if k == (h2TryKey{}) {
		return c
	}
	v := c.Context.Value(k)
	if _, ok := v.(*httptrace.ClientTrace); ok {
		return &c.t
	}
	return v
}

func (c *h2Try) got1xx(code int, h textproto.MIMEHeader) error {
	return pass1xx(&c.n1xx, c.next1xx, code, h)
}

func (c *h2Try) gotConn(info httptrace.GotConnInfo) {
	if hc, ok := info.Conn.(*h2Conn); ok {
		hc.awaitSettled(c.Context)
		n := c.placed.Load()
		if n == 0 || c.on[(n-1)%uint32(len(c.on))].Load() != hc {
			i := n % uint32(len(c.on))
			c.wrote[i].Store(0) // before the slot names another connection
			c.on[i].Store(hc)
			c.placed.Store(n + 1)
		}
	}
	if c.nextConn != nil {
		c.nextConn(info)
	}
}

// wroteHeaders records the stream the try's request just went out on.
// Go's transport calls it holding the connection's write lock, right
// after flushing the request's HEADERS (its encodeAndWriteHeaders), and
// before the RoundTrip on that connection returns: the last HEADERS
// written on the connection the try was last placed on is its own, and
// the record is there before the try can dial again.
func (c *h2Try) wroteHeaders() {
	if n := c.placed.Load(); n > 0 {
		i := (n - 1) % uint32(len(c.on))
		if hc := c.on[i].Load(); hc != nil {
			c.wrote[i].Store(hc.sent.Load())
		}
	}
	if c.nextWrote != nil {
		c.nextWrote()
	}
}

// streamReset reports whether the upstream reset with PROTOCOL_ERROR a
// stream this try wrote: its own, not another call's on a connection they
// shared. A connection also lost to the try by another call's reset, a
// GOAWAY below the try's stream (never processed), REFUSED_STREAM, or a
// request that found the connection unusable before its HEADERS went
// (errClientConnUnusable) are not: each says the request was never
// processed, and a dial refused after them stays a connect failure.
func (c *h2Try) streamReset() bool {
	for i := range c.on {
		hc := c.on[i].Load()
		if s := c.wrote[i].Load(); hc != nil && s != 0 && hc.resetStream(s) {
			return true
		}
	}
	return false
}

// errStreamReset is the first failure of a try whose stream the upstream
// reset with PROTOCOL_ERROR, which Go's transport sent again on a new
// connection (golang/go#47635) that could not be made.
var errStreamReset = errors.New("the upstream reset the request's stream (HTTP/2 PROTOCOL_ERROR)")

// lost counts the connections lost (h2Conn) among the last the try was
// placed on. Not only the one it was last on, and not only closed ones:
// Go's transport closes a connection reset with PROTOCOL_ERROR once its
// last stream has gone, and with many calls on it that can come after
// the try dialled again, twice (50 concurrent GETs to an upstream
// resetting every stream: a try dialled up to 16 times,
// TestH2ResetRedialConcurrent). A connection a try was refused on
// (REFUSED_STREAM: its stream sent before the upstream's SETTINGS that
// lowered its limit arrived; a new connection's first SETTINGS are read
// before any request, awaitSettings) stays open, usable, with the
// streams it took: not lost.
func (c *h2Try) lost() int {
	n := 0
	for i := range c.on {
		if on := c.on[i].Load(); on != nil && (on.closed.Load() || on.reset.Load()) {
			n++
		}
	}
	return n
}

// h2TryKey finds a try's h2Try (boundDials).
type h2TryKey struct{}

// h2Conn is a connection of the h2c transport, which tells whether it
// is lost to new requests: closed, or sent an RST_STREAM with
// PROTOCOL_ERROR, after which Go's transport places no request on it
// (golang/go#47635) and closes it once no stream is left, which with many
// calls on it comes late (h2Tries). reset is set as the frame is read,
// before Go's transport hands the reset to the try it ends: no lag. It
// also tells which streams were so reset (resetStream) and the last
// stream whose HEADERS went out (sent), for a try to know that its own
// stream was reset (h2Try.streamReset).
type h2Conn struct {
	net.Conn
	closed atomic.Bool
	reset  atomic.Bool
	// The frame walk of the bytes read (Read, on the transport's one
	// read loop): where it is in the frames, and whether the frame is
	// an RST_STREAM, with its error code so far.
	in   frameCursor
	rst  bool
	code uint32
	// mu guards resets, the streams reset with PROTOCOL_ERROR (at most
	// maxResetStreams: Go places no stream on the connection after the
	// first, so they are the streams open then).
	mu     sync.Mutex
	resets []uint32
	// The frame walk of the bytes written (Write, under the transport's
	// write lock): how many of the client preface's bytes went (wpre),
	// then where it is in the frames.
	wpre int
	out  frameCursor
	// sent is the stream of the last HEADERS frame written.
	sent atomic.Uint32
	// settled is closed once Go's transport has read the upstream's
	// first SETTINGS (it writes the acknowledgement after taking the
	// settings in), or the connection failed, or the wait for them
	// ended (settle); settling tells that has happened. Nil for a
	// connection awaitSettings's wrapper never had.
	settled  chan struct{}
	settling atomic.Bool
}

// carried reports whether a stream went out on the connection (its
// HEADERS written: any call's) and it was not reset with PROTOCOL_ERROR:
// the dial that made it served a call (boundDials).
func (c *h2Conn) carried() bool {
	return c.sent.Load() != 0 && !c.reset.Load()
}

// h2Preface is the client connection preface, the first bytes written
// (RFC 9113 §3.4), before any frame.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// maxResetStreams bounds the streams an h2Conn remembers reset: past it,
// a try whose stream was reset among the later ones fails, if its dial
// again is refused, as that connect failure (before 2026-12-07, every
// such try did).
const maxResetStreams = 1024

func (c *h2Conn) Close() error {
	c.closed.Store(true)
	c.settle()
	return c.Conn.Close()
}

func (c *h2Conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.walk(p[:n])
	if err != nil {
		c.settle() // no SETTINGS to wait for on this connection
	}
	return n, err
}

// settle tells awaitSettings that Go's transport has read the upstream's
// first SETTINGS, or never will, or that the wait for them is over.
func (c *h2Conn) settle() {
	if c.settled != nil && c.settling.CompareAndSwap(false, true) {
		close(c.settled)
	}
}

// awaitSettled holds a request Go's transport placed on c before it read
// c's first SETTINGS (awaitSettings: one that found c in the
// transport's pool before the dial handed it on) until it has, so that
// its stream is opened against the upstream's real limit, or until ctx
// ends. An atomic load for any other request.
func (c *h2Conn) awaitSettled(ctx context.Context) {
	if c.settled == nil || c.settling.Load() {
		return
	}
	select {
	case <-c.settled:
	case <-ctx.Done():
	}
}

// Write follows the frames written for the stream of each HEADERS
// (type 1): what went is the request's, also when the write fails.
func (c *h2Conn) Write(p []byte) (int, error) {
	b := p
	if c.wpre < len(h2Preface) {
		k := min(len(h2Preface)-c.wpre, len(b))
		c.wpre += k
		b = b[k:]
	}
	for len(b) > 0 {
		var header bool
		if b, _, header = c.out.step(b); !header {
			continue
		}
		if c.out.frameType() == 0x1 {
			c.sent.Store(c.out.stream())
		} else if c.out.frameType() == 0x4 && c.out.flags()&0x1 != 0 {
			// The transport acknowledges SETTINGS once it has taken
			// them in (processSettings): the first is the upstream's
			// first SETTINGS.
			c.settle()
		}
	}
	return c.Conn.Write(p)
}

// resetStream reports whether the upstream reset stream id with
// PROTOCOL_ERROR on this connection.
func (c *h2Conn) resetStream(id uint32) bool {
	if !c.reset.Load() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.resets, id)
}

// walk follows the upstream's frames (RFC 9113 §4.1: a 9-byte header,
// its payload's length first and its type fourth) across reads, skipping
// payloads, to find each RST_STREAM (type 3, a 4-byte error code) with
// PROTOCOL_ERROR (1). An h2c server's first bytes are a frame (its
// SETTINGS): no preface to skip.
func (c *h2Conn) walk(b []byte) {
	for len(b) > 0 {
		var payload []byte
		var header bool
		b, payload, header = c.in.step(b)
		if header {
			c.rst, c.code = c.in.frameType() == 0x3 && c.in.left == 4, 0
			continue
		}
		if !c.rst || len(payload) == 0 {
			continue // not an RST_STREAM's code, or the next frame's header
		}
		for _, x := range payload {
			c.code = c.code<<8 | uint32(x)
		}
		if c.in.left == 0 && c.code == 0x1 {
			c.mu.Lock()
			if len(c.resets) < maxResetStreams {
				c.resets = append(c.resets, c.in.stream())
			}
			c.mu.Unlock()
			c.reset.Store(true)
		}
	}
}

// frameCursor is where a walk is in the frames of one direction of an
// HTTP/2 connection (RFC 9113 §4.1: a 9-byte header, its payload's
// length first, then its type, flags and stream), however they are cut
// into reads or writes: h2Conn follows both directions without a copy
// of a payload, nor a byte taken from one for a header.
type frameCursor struct {
	hdr  [9]byte // the frame's header, whole once step said so
	hn   int     // the header's bytes so far
	left uint32  // the payload's bytes yet to come
}

// step takes b's first bytes, either header or payload bytes, never
// both, so that a walk looks at a frame's header before its payload: it
// returns the bytes it left, the payload bytes it took (empty if it took
// header bytes), and whether they completed a header, which frameType,
// flags and stream then tell, and whose payload is the next left bytes.
func (c *frameCursor) step(b []byte) (rest, payload []byte, header bool) {
	if c.left > 0 {
		k := min(int(c.left), len(b))
		c.left -= uint32(k)
		return b[k:], b[:k], false
	}
	k := copy(c.hdr[c.hn:], b)
	if c.hn += k; c.hn < len(c.hdr) {
		return b[k:], nil, false
	}
	c.hn = 0
	c.left = binary.BigEndian.Uint32(c.hdr[:4]) >> 8 // the first 3 bytes
	return b[k:], nil, true
}

func (c *frameCursor) frameType() byte { return c.hdr[3] }
func (c *frameCursor) flags() byte     { return c.hdr[4] }

// stream is the frame's stream identifier, its reserved bit cleared.
func (c *frameCursor) stream() uint32 {
	return binary.BigEndian.Uint32(c.hdr[5:]) & 0x7fffffff
}

// maxLostPerTry: a try's request on a cached connection or its first new
// one, and once more on a new connection, before its stream's reset
// ends the try.
const maxLostPerTry = 2

// maxDialsPerTry bounds a try's dials that carried no stream, its own or
// another call's: a safety net for an upstream that never has room
// (SETTINGS_MAX_CONCURRENT_STREAMS 0), for which Go's transport dials for
// ever without placing the request. A dial whose connection another call
// took first (racing for room: the transport hands a new connection's
// room to whichever call asks first) served that call and is not counted:
// 40 calls at once to an upstream taking one stream per connection left a
// try 16 dials, every one taken by another call, and failed it (1 run in
// 2 to 5 of TestH2ConcurrentCallsNoFalseReset before 2026-12-07, since
// new connections wait for their SETTINGS, awaitSettings, while other
// calls reserve room on them).
const maxDialsPerTry = 16

// maxDialsAtAll bounds a try's dials whatever they carried: a try that
// loses the race for room this many times fails, within its timeout.
// Those 40 calls dialled 40 connections in all, one try up to 32 of them
// (20 runs).
const maxDialsAtAll = 4 * maxDialsPerTry

// errRedialed is a try whose stream was reset on every connection the
// transport dialled for it.
var errRedialed = errors.New("the upstream reset the stream on every new connection (HTTP/2 PROTOCOL_ERROR): not dialled again for this try")

// errDialBound is a try that dialled maxDialsPerTry connections that
// carried no stream.
var errDialBound = fmt.Errorf("%d new upstream connections for one try, none of which carried a stream to an answer (no room for it, HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS, or its stream reset): not dialled again for this try", maxDialsPerTry)

// errDialCap is a try that dialled maxDialsAtAll connections, each taken
// by other calls first.
var errDialCap = fmt.Errorf("%d new upstream connections for one try, each taken by other calls before it (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): not dialled again for this try", maxDialsAtAll)

// dialEpoch counts the h2c transport's ended dials.
var dialEpoch atomic.Uint64

// boundDials is dial refusing the dials of a try past its bounds
// (h2Tries), and telling it the connections it dials. Go's transport
// dials once at a time per destination (newH2CTransport): a try that
// waited for a dial that failed fails with it, as its own dial would
// have, instead of dialling in its turn, each after the one before
// it had run to its connect timeout (an unreachable pod).
func boundDials(dial func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	var mu sync.Mutex
	failed := map[string]dialFailure{} // by address, until a dial succeeds
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, _ := ctx.Value(h2TryKey{}).(*h2Try)
		if c != nil {
			mu.Lock()
			f, ok := failed[addr]
			mu.Unlock()
			if ok && c.epoch < f.epoch {
				return nil, c.dialFailed(f.err)
			}
			if c.lost() >= maxLostPerTry {
				return nil, errRedialed
			}
			if prev := c.dialled.Swap(nil); prev != nil && !prev.carried() {
				c.wasted.Add(1) // judged now: another call's HEADERS are out by then
			}
			if c.wasted.Load() >= maxDialsPerTry {
				return nil, errDialBound
			}
			if c.dial.Add(1) > maxDialsAtAll {
				return nil, errDialCap
			}
		}
		conn, err := dial(ctx, network, addr)
		mu.Lock()
		if err != nil {
			if len(failed) >= maxDialFailures {
				clear(failed) // addresses that never came back
			}
			failed[addr] = dialFailure{dialEpoch.Add(1), err}
		} else {
			dialEpoch.Add(1)
			delete(failed, addr)
		}
		mu.Unlock()
		if err != nil {
			if c != nil {
				err = c.dialFailed(err)
			}
			return nil, err
		}
		hc := &h2Conn{Conn: conn}
		if c != nil {
			c.dialled.Store(hc)
		}
		return hc, nil
	}
}

// h2SettingsWait bounds how long a new upstream connection waits, before
// requests are placed on it, for Go's transport to have read the
// upstream's first SETTINGS (awaitSettings); past it the connection is
// used as it would have been at once, as --connect-timeout's default
// bounds a connect.
const h2SettingsWait = 5 * time.Second

// awaitSettings has Go's transport read a new upstream connection's
// first SETTINGS before it places any request on it. The transport takes
// 100 concurrent streams on a connection whose SETTINGS it has not read
// (h2_bundle.go: initialMaxConcurrentStreams; it waits for them only for
// an extended CONNECT), and hands a new connection to the requests that
// waited for its dial as soon as it has made its ClientConn: a burst to
// an upstream whose SETTINGS_MAX_CONCURRENT_STREAMS is lower (a grpc-go
// server's grpc.MaxConcurrentStreams) had every stream past the limit
// refused (REFUSED_STREAM), or, its SETTINGS read between a request's
// reservation and its stream, failed as unusable with a body the
// transport had closed ("cannot rewind body"), on each new connection,
// each a connect failure for the breaker. grpc-go's own client waits for
// the server's SETTINGS before it uses a connection.
//
// The transport makes a new h2c connection's ClientConn in its
// TLSNextProto["unencrypted_http2"] function (it writes the client
// preface and its SETTINGS there, so a server that waits for the
// preface answers), and hands the connection to the waiting requests
// only after that function returned (dialConn, then dialConnFor): the
// wrapper returns once the transport has acknowledged the upstream's
// SETTINGS, which it does after taking them in (processSettings), so a
// request reserves its stream against the upstream's real limit, and
// past it the transport dials another connection, as it does for a
// full one. The connection failing, or wait passing, ends the wait too.
// The transport's HTTP/2 pool has the new connection before the wait,
// though: a request that the transport handed an older connection of
// the destination, and that looks for room among them just then, can
// reserve a stream on it under the assumed 100; such a request waits
// in its GotConn (awaitSettled), before its stream is opened. Only if
// more such requests than the upstream's limit came at once would the
// ones past it fail (unusable, "cannot rewind body").
func awaitSettings(t *http.Transport, wait time.Duration) {
	t.CloseIdleConnections() // sets the transport's HTTP/2 up, TLSNextProto included
	const key = "unencrypted_http2"
	next := t.TLSNextProto[key]
	if next == nil {
		return // no HTTP/2: nothing to wait for
	}
	t.TLSNextProto[key] = func(authority string, c *tls.Conn) http.RoundTripper {
		var hc *h2Conn
		if u, ok := c.NetConn().(interface{ UnencryptedNetConn() net.Conn }); ok {
			hc, _ = u.UnencryptedNetConn().(*h2Conn)
		}
		if hc == nil {
			return next(authority, c)
		}
		// Before the transport has the connection: its read loop and
		// the requests placed on it see the channel.
		hc.settled = make(chan struct{})
		rt := next(authority, c)
		tm := time.NewTimer(wait)
		select {
		case <-hc.settled:
		case <-tm.C:
			hc.settle() // no longer waited for (awaitSettled)
		}
		tm.Stop()
		return rt
	}
}

// dialFailed is err, the failed dial of the try, as the try's failure:
// the reset of its stream when the upstream had reset it (streamReset)
// and Go's transport was sending it again (golang/go#47635), as the
// HTTP/1 paths take a resend's failed dial (resentFailure): the upstream
// had the request, and a connect failure would say it never went. A dial
// that ran out of time stays a timeout.
func (c *h2Try) dialFailed(err error) error {
	if !c.streamReset() {
		return err
	}
	return resentFailure(errStreamReset, err, true)
}

// dialFailure is an address's last failed dial: its error, and the
// dialEpoch it ended.
type dialFailure struct {
	epoch uint64
	err   error
}

// maxDialFailures bounds the addresses whose failed dial boundDials
// keeps.
const maxDialFailures = 1024

// H2MaxConcurrentStreams bounds the streams an app may have open on one
// HTTP/2 connection to the sidecar (SETTINGS_MAX_CONCURRENT_STREAMS);
// more are refused with REFUSED_STREAM, which clients retry. Go's own
// default; with the listener's connection cap it bounds the calls in
// flight.
const H2MaxConcurrentStreams = 250

// ServerProtocols are the protocols of the outbound listeners: HTTP/1.x
// and HTTP/2 with prior knowledge (h2c), told apart by the first bytes.
func ServerProtocols() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &p
}

// ServerHTTP2 is the HTTP/2 configuration of the outbound listeners:
// every limit explicit and bounded (docs/grpc.md, "Limits"). The header
// list is bounded by the server's MaxHeaderBytes (SETTINGS_MAX_HEADER_LIST_SIZE).
func ServerHTTP2() *http.HTTP2Config {
	return &http.HTTP2Config{
		MaxConcurrentStreams:          H2MaxConcurrentStreams,
		MaxReadFrameSize:              H2MaxReadFrameSize,
		MaxDecoderHeaderTableSize:     4 << 10,
		MaxEncoderHeaderTableSize:     4 << 10,
		MaxReceiveBufferPerConnection: H2MaxReceiveBuffer,
		MaxReceiveBufferPerStream:     H2MaxReceiveBuffer,
		SendPingTimeout:               H2ReadIdleTimeout,
		PingTimeout:                   H2PingTimeout,
	}
}

// H2MaxReadFrameSize is the largest frame the sidecar reads (SETTINGS_MAX_FRAME_SIZE).
const H2MaxReadFrameSize = 1 << 20

// grpcFinal is the status a gRPC call's client got: the upstream's or
// the sidecar's, else what the client reads from the HTTP status.
func grpcFinal(st *reqState, httpCode int) int {
	if st.grpcStatus >= 0 {
		return st.grpcStatus
	}
	return grpcFromHTTP(httpCode)
}

// endGRPCSpan puts a gRPC call's status on its span, before endSpan: the
// RPC conventions' rpc.grpc.status_code, and any code but OK is an
// error of the client span.
func endGRPCSpan(s trace.Span, code int) {
	if !s.IsRecording() {
		return
	}
	s.SetAttributes(attribute.Int("rpc.grpc.status_code", code))
	if code != grpcOK {
		s.SetStatus(codes.Error, grpcName(code))
	}
}

// atClientDeadline reports whether a gRPC call whose time is its
// client's own grpc-timeout (callDeadline) is within grpcDeadlineSlack of
// that deadline, or past it; false for any other call.
func (st *reqState) atClientDeadline() bool {
	return !st.callDeadline.IsZero() && since(st.start).Add(grpcDeadlineSlack).After(st.callDeadline)
}

// clientsDeadline reports whether a try's failure is its client's own
// deadline running out, not the upstream's failing: a timeout or a reset
// (class), or the upstream's DEADLINE_EXCEEDED (status g, -1: none), at
// the client's grpc-timeout. The upstream was told that deadline and
// enforced it for the client; a caller that sets 10 ms against a
// healthy 50 ms service must not open the breaker, nor eject an
// endpoint, for every other caller. Its outcome counts neither way
// (breaker.ErrIgnored), as a client that cancels its call
// (docs/grpc.md, "Deadlines"). The policy's own timeout, and an
// upstream's DEADLINE_EXCEEDED well before the client's deadline (its
// own dependency's), count as failOn says.
func (st *reqState) clientsDeadline(class policy.Class, g int) bool {
	if st.callDeadline.IsZero() {
		return false // not a gRPC call, or its time is the policy's
	}
	switch {
	case class == policy.ClassTimeout, class == policy.ClassReset:
	case class == 0 && g == grpcDeadlineExceeded:
	default:
		return false
	}
	return st.atClientDeadline()
}

// grpcDeadlineSlack: an upstream's reset this close to a call's deadline
// is the deadline's, answered DEADLINE_EXCEEDED.
const grpcDeadlineSlack = 10 * time.Millisecond

// atCallDeadline reports whether a gRPC call is within grpcDeadlineSlack
// of its deadline, or past it: the client's own (callDeadline), else the
// sidecar's (ctx's). A gRPC server resets a call at its deadline
// (grpc-timeout), which the sidecar's own timer may not have seen fire
// yet: that reset, before the answer's headers or after, is the
// deadline's.
func (st *reqState) atCallDeadline(ctx context.Context) bool {
	dl := st.callDeadline
	if dl.IsZero() {
		var ok bool
		if dl, ok = ctx.Deadline(); !ok {
			return false
		}
	}
	return since(st.start).Add(grpcDeadlineSlack).After(dl)
}

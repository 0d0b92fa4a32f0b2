package outbound

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/breaker"
	"github.com/minimesh/minimesh/wellknown"
)

// Causes of a context's end, told apart with context.Cause; the fast
// transport's deadlines fail with them too (deadlines).
var (
	errTimeout       = errors.New("request timeout")
	errPerTryTimeout = errors.New("per-try timeout")
)

// statusClientClosed is recorded (never sent) when the client went away
// before the response: nginx's 499, which dashboards already know.
const statusClientClosed = 499

// circuitOpenError is a try refused by an open breaker.
type circuitOpenError struct {
	destination string
	retryAfter  time.Duration
}

func (e *circuitOpenError) Error() string {
	return "circuit breaker for " + e.destination + " is open"
}

// upstreamError is a try that failed before response headers, with the
// class that retryOn and failOn name.
type upstreamError struct {
	class policy.Class
	err   error
}

func (e *upstreamError) Error() string { return e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// clientError is a request the app itself got wrong, such as a body
// over the limit or one that could not be read: never the upstream's
// failure.
type clientError struct{ err error }

func (e *clientError) Error() string { return e.err.Error() }
func (e *clientError) Unwrap() error { return e.err }

// dialError marks an error from making the connection: the request was
// never sent, so any method may be retried.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// localError marks a dial that failed for want of the sidecar's own
// resources (ownResources: out of file descriptors, say, with idle
// connections held): the destination may be healthy. Inside a
// dialError, so that a path that does not look for it still takes it
// for the connect failure it was before; the try loop (refusal) and
// tunnels do look, and answer 503 overloaded without a breaker or
// endpoint verdict and without a retry: the sidecar's own failure held
// against the destination opened a healthy one's breaker.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

// unprocessedError marks an HTTP/2 try that the upstream did not
// process: it refused the stream (RST_STREAM REFUSED_STREAM, or a GOAWAY
// whose last stream ID is below it, RFC 9113 §8.7), or Go's transport
// never sent it (h2Unprocessed). Like a dialError, the request may go
// again whatever its method: it counts as connect-failure. unsent says
// that no connection ever took it (h2Unsent): the try loop sends it
// once more, free, whatever the policy (forward.go).
type unprocessedError struct {
	err    error
	unsent bool
}

func (e *unprocessedError) Error() string { return e.err.Error() }
func (e *unprocessedError) Unwrap() error { return e.err }

// heldVerdict is the breaker's verdict on a try the upstream refused
// unprocessed, held until the try loop knows whether another try
// follows. A refusal says one connection (a server shutting down, at its
// stream limit) takes no more streams, not that the destination fails:
// every call racing a server's graceful stop is refused at once, and
// counted each, they opened a breaker of 5 consecutive failures in a
// rolling deployment. So a refused try that is retried counts neither
// way (its retry is judged), and one that is the request's answer counts
// as the connect-failure it is answered as; a half-open probe's yields
// its place to the retry (retryable), its verdict held until the retry
// is sent, so that a retry the breaker refuses after all leaves the
// probe's failure counted. Its endpoint hears it at once, as a connect
// failure.
type heldVerdict struct {
	done    breaker.Done
	outcome error
}

// report gives the breaker the try's outcome; ignore tells it the try
// counts neither way. Either once; nil-safe.
func (h *heldVerdict) report() {
	if h != nil && h.done != nil {
		h.done(h.outcome)
		h.done = nil
	}
}

func (h *heldVerdict) ignore() {
	if h != nil && h.done != nil {
		h.done(breaker.ErrIgnored)
		h.done = nil
	}
}

// yield frees a half-open probe's place for the try's retry, its verdict
// still to be reported or ignored (breaker.ErrYielded); nil-safe.
func (h *heldVerdict) yield() {
	if h != nil && h.done != nil {
		h.done(breaker.ErrYielded)
	}
}

// allow asks b for the permission of the held try's retry, a half-open
// probe's place yielded to it first (yield); refused, the held try is
// the answer, its verdict reported. Admitted, the verdict is the
// caller's to ignore once the retry is sent, or report if it is not
// after all. The one rule of an HTTP request's retries (retryable) and an
// opaque connection's (dialTunnel); nil-safe.
func (h *heldVerdict) allow(b *breaker.Breaker) (breaker.Done, error) {
	h.yield()
	done, err := b.Allow()
	if err != nil {
		h.report()
	}
	return done, err
}

// The texts of the errors of net/http's HTTP/2 client (h2_bundle.go, Go
// 1.26) that say the upstream processed nothing of a request. Its error
// values are unexported and, once a request with a body fails, flattened
// into text (shouldRetryRequest's fmt.Errorf with %v): the text is all
// there is. TestH2UnprocessedRealTransport drives the real transport
// against a real server for each, so that a Go upgrade that changes one
// fails loudly.
const (
	// h2CannotRetryPrefix and h2CannotRetrySuffix wrap the transport's
	// own error when the request has a body and no GetBody (the
	// sidecar never gives one: docs/grpc.md, "Retries").
	h2CannotRetryPrefix = "http2: Transport: cannot retry err ["
	h2CannotRetrySuffix = "] after Request.Body was written; define Request.GetBody to avoid this error"
	// h2GotGoAway: a stream above the last stream ID of a GOAWAY with
	// NO_ERROR (errClientConnGotGoAway), as a server shutting down sends.
	h2GotGoAway = "http2: Transport received Server's graceful shutdown GOAWAY"
	// h2GoAwayFirstStream: the same for a GOAWAY with an error code, when
	// the stream is the connection's first (setGoAway).
	h2GoAwayFirstStream = "http2: Transport received GOAWAY from server ErrCode:"
	// h2RefusedStream: an RST_STREAM REFUSED_STREAM, "stream error: stream
	// ID 3; REFUSED_STREAM; received from peer" (http2StreamError).
	h2StreamErrorPrefix = "stream error: stream ID "
	h2RefusedSuffix     = "; REFUSED_STREAM; received from peer"
	// h2NotEstablished: the connection closed before its first stream
	// was created (errClientConnNotEstablished).
	h2NotEstablished = "http2: client conn could not be established"
	// h2CannotRewind: http.Transport found no usable HTTP/2 connection
	// (the one it picked had a GOAWAY before the stream was created) and
	// would dial another, but the attempt on the first had closed the
	// body (errCannotRewind). On the HTTP/2 path http.Transport retries
	// only a request no connection took (http2isNoCachedConnError), so
	// it was never sent; on HTTP/1.1 it may follow one that was.
	h2CannotRewind = "net/http: cannot rewind body after connection loss"
)

// h2StreamError has the fields of net/http's unexported
// http2StreamError, whose As method fills any struct of the same shape
// (it is meant for golang.org/x/net/http2.StreamError): the typed check
// of a stream error that comes unwrapped.
type h2StreamError struct {
	StreamID uint32
	Code     uint32
	Cause    error
}

func (e h2StreamError) Error() string { return "stream error" }

// h2ErrCodeRefusedStream is REFUSED_STREAM (RFC 9113 §7).
const h2ErrCodeRefusedStream = 0x7

// h2Unprocessed reports whether err, from an HTTP/2 try of net/http's
// transport, says that the upstream processed nothing of the request:
// it refused the stream (REFUSED_STREAM, a GOAWAY below it), or the
// transport never sent it. An RST_STREAM with any other code
// (PROTOCOL_ERROR, INTERNAL_ERROR, CANCEL) and a connection lost under a
// stream the upstream may have taken are not: they stay resets. Called
// only on a failed HTTP/2 try, never on the HTTP/1.1 fast path.
func h2Unprocessed(err error) bool {
	var se h2StreamError
	if errors.As(err, &se) {
		return se.Code == h2ErrCodeRefusedStream
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		msg := e.Error()
		if inner, ok := strings.CutPrefix(msg, h2CannotRetryPrefix); ok {
			if inner, ok = strings.CutSuffix(inner, h2CannotRetrySuffix); ok {
				msg = inner
			}
		}
		switch {
		case msg == h2GotGoAway, msg == h2NotEstablished, msg == h2CannotRewind,
			strings.HasPrefix(msg, h2GoAwayFirstStream):
			return true
		case strings.HasPrefix(msg, h2StreamErrorPrefix) && strings.HasSuffix(msg, h2RefusedSuffix):
			id := msg[len(h2StreamErrorPrefix) : len(msg)-len(h2RefusedSuffix)]
			return id != "" && strings.Trim(id, "0123456789") == ""
		}
	}
	return false
}

// h2Unsent reports whether err, one h2Unprocessed takes, says that Go's
// transport sent the request on no connection: the one it was placed on
// closed before its first stream, or had a GOAWAY before the request's
// stream was created, and no other connection was there to take it. Not
// a refusal of the upstream's (REFUSED_STREAM, a GOAWAY below a stream
// that was sent): those a server may send on purpose, again and again.
func h2Unsent(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if msg := e.Error(); msg == h2CannotRewind || msg == h2NotEstablished {
			return true
		}
	}
	return false
}

// h2HeaderListTooLarge is the text of the error net/http's HTTP/2 client
// (internal/httpcommon's ErrRequestHeaderListSize, Go 1.26) gives a request
// whose header list, or whose trailers, are larger than the upstream's
// SETTINGS_MAX_HEADER_LIST_SIZE: it sends nothing of them. The headers'
// comes wrapped as "http2: " and this text (encodeRequestHeaders), the
// trailers' bare (encodeTrailers); the value is unexported, so the text
// is all there is (TestHeaderListOverUpstreamLimit drives the real
// transport, so that a Go upgrade that changes it fails loudly).
const h2HeaderListTooLarge = "request header list larger than peer's advertised limit"

// peerHeaderLimit reports whether err is the HTTP/2 transport's refusal to
// send a header list over the upstream's advertised limit.
func peerHeaderLimit(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if msg := e.Error(); msg == h2HeaderListTooLarge || msg == "http2: "+h2HeaderListTooLarge {
			return true
		}
	}
	return false
}

// headerListError is a request whose header list (or trailers) the
// HTTP/2 upstream's SETTINGS_MAX_HEADER_LIST_SIZE refuses, smaller than
// the sidecar's own limit: the app's fault, answered 431 as an HTTP/1.1
// upstream would answer it, never the upstream's failure (it got nothing
// of the request) nor a try to repeat.
type headerListError struct{ err error }

func (e *headerListError) Error() string { return e.err.Error() }
func (e *headerListError) Unwrap() error { return e.err }

// classAppFault is the late failure (reqState.late) of a response cut
// because the app's own request failed after the upstream's headers (its
// body over --max-request-body-bytes, shorter or longer than its
// content-length, its trailers over the upstream's limit): Go's transport
// ends the upstream's stream for it. It is answered, recorded and counted
// as the app's fault (refusal), as before the headers, not as the
// upstream's reset. A bit no policy class uses: never named by failOn or
// retryOn.
const classAppFault policy.Class = 1 << 7

// classify names the failure of one try. tryCtx is the try's context,
// parent the request's.
func classify(err error, tryCtx, parent context.Context) (policy.Class, bool) {
	if parent.Err() != nil {
		if context.Cause(parent) == errTimeout {
			return policy.ClassTimeout, false
		}
		return 0, true // the client went away
	}
	if context.Cause(tryCtx) == errPerTryTimeout || errors.Is(err, errPerTryTimeout) || errors.Is(err, errTimeout) {
		// (The fast transport's tries end at deadlines, not by their
		// contexts: they return errPerTryTimeout or errTimeout itself.)
		return policy.ClassTimeout, false
	}
	var de *dialError
	var ue *unprocessedError
	if errors.As(err, &de) || errors.As(err, &ue) {
		return policy.ClassConnectFailure, false
	}
	var ne net.Error
	// ETIMEDOUT is a Timeout() too, but it is the kernel giving the
	// connection up (TCP_USER_TIMEOUT on an h2c upstream's: dial.go,
	// unacknowledged data or keepalive probes): the connection lost, a
	// reset, as when a PING went unanswered, not the call's time run out
	// (which gRPC reads DEADLINE_EXCEEDED).
	if errors.As(err, &ne) && ne.Timeout() && !errors.Is(err, syscall.ETIMEDOUT) {
		return policy.ClassTimeout, false
	}
	return policy.ClassReset, false
}

// lateFailure is the status and kind of a response that failed after its
// headers, as the sidecar would have answered had they not gone out; err
// is the failure (reqState.lateErr), which tells the app's faults
// (classAppFault) apart.
func lateFailure(c policy.Class, err error) (int, string) {
	switch c {
	case policy.ClassTimeout:
		return http.StatusGatewayTimeout, wellknown.ErrorTimeout
	case classAppFault:
		code, kind, _ := errorResponse(err, "")
		return code, kind
	}
	return http.StatusBadGateway, wellknown.ErrorReset
}

// errorBody is the JSON body of the sidecar's own error responses, so a
// person reading a client log learns who answered and why.
type errorBody struct {
	Error             string `json:"error"`
	Destination       string `json:"destination,omitempty"`
	Message           string `json:"message"`
	RetryAfterSeconds int    `json:"retryAfterSeconds,omitempty"`
	RequestID         string `json:"requestId,omitempty"`
}

// writeError answers a request that the sidecar could not forward.
func writeError(w http.ResponseWriter, code int, kind string, b errorBody) {
	h := w.Header()
	h.Set(wellknown.HeaderError, kind)
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if b.RetryAfterSeconds > 0 {
		h.Set("Retry-After", strconv.Itoa(b.RetryAfterSeconds))
	}
	b.Error = kind
	body, _ := json.Marshal(b)
	body = append(body, '\n')
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// The header values of the open breaker's answer, shared by every answer:
// full slices (len == cap), so that an append never writes into them.
var (
	circuitOpenValue = []string{wellknown.ErrorCircuitOpen}
	jsonValue        = []string{"application/json"}
	noStoreValue     = []string{"no-store"}
)

// circuitOpenBufs lend writeCircuitOpen its body buffer: the app's
// ResponseWriter is an interface, through which a stack buffer escapes.
var circuitOpenBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// writeCircuitOpen is writeError for an open breaker's answer, the same
// bytes without an error value, a JSON encoder nor a header map
// allocation per header: vals, which the request's state lends, holds
// the Retry-After and Content-Length values. It returns false, having
// written nothing, when dest or id holds a byte that JSON would escape:
// then writeError must.
func writeCircuitOpen(w http.ResponseWriter, dest, id string, retryAfter int, vals *[2]string) bool {
	if !jsonPlain(dest) || !jsonPlain(id) || retryAfter <= 0 {
		return false
	}
	bp := circuitOpenBufs.Get().(*[]byte)
	b := append((*bp)[:0], `{"error":"`+wellknown.ErrorCircuitOpen+`","destination":"`...)
	b = append(b, dest...)
	b = append(b, `","message":"circuit breaker for `...)
	b = append(b, dest...)
	b = append(b, ` is open; the sidecar answered without contacting it","retryAfterSeconds":`...)
	b = strconv.AppendInt(b, int64(retryAfter), 10)
	b = append(b, `,"requestId":"`...)
	b = append(b, id...)
	b = append(b, "\"}\n"...)
	vals[0], vals[1] = retryAfterText(retryAfter), smallItoa(len(b))
	h := w.Header()
	h[wellknown.HeaderError] = circuitOpenValue
	h["Content-Type"] = jsonValue
	h["Cache-Control"] = noStoreValue
	h["Retry-After"] = vals[0:1:1]
	h["Content-Length"] = vals[1:2:2]
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write(b)
	*bp = b
	circuitOpenBufs.Put(bp)
	return true
}

// jsonPlain reports whether encoding/json writes s as it is: printable
// ASCII without '"', '\\' and the characters it escapes for HTML.
func jsonPlain(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// lastRetryAfter is the latest Retry-After value of 1000 s or more
// (an openTimeout of an hour, say): it stays the same for a second of
// answers.
var lastRetryAfter atomic.Pointer[secondsText]

type secondsText struct {
	n int
	s string
}

// retryAfterText is smallItoa for a Retry-After value.
func retryAfterText(n int) string {
	if n < 1000 {
		return smallItoa(n)
	}
	if p := lastRetryAfter.Load(); p != nil && p.n == n {
		return p.s
	}
	p := &secondsText{n, strconv.Itoa(n)}
	lastRetryAfter.Store(p)
	return p.s
}

// threeDigits holds 100 to 999 written out, three bytes each.
var threeDigits = func() string {
	b := make([]byte, 0, 900*3)
	for i := 100; i < 1000; i++ {
		b = strconv.AppendInt(b, int64(i), 10)
	}
	return string(b)
}()

// smallItoa is strconv.Itoa without its allocation below 1000.
func smallItoa(n int) string {
	if n >= 100 && n < 1000 {
		i := (n - 100) * 3
		return threeDigits[i : i+3]
	}
	return strconv.Itoa(n) // below 100, strconv's own table
}

// errorResponse maps a forwarding error to the contract's answer.
func errorResponse(err error, dest string) (code int, kind string, b errorBody) {
	b.Destination = dest
	var co *circuitOpenError
	var ue *upstreamError
	var mb *http.MaxBytesError
	switch {
	case errors.As(err, &co):
		b.RetryAfterSeconds = int(co.retryAfter / time.Second)
		b.Message = co.Error() + "; the sidecar answered without contacting it"
		return http.StatusServiceUnavailable, wellknown.ErrorCircuitOpen, b
	case errors.As(err, new(*selfError)):
		b.Message = err.Error()
		return http.StatusForbidden, wellknown.ErrorForbidden, b
	case errors.As(err, new(*localError)):
		b.Message = "the sidecar has no file descriptor or memory left for a connection to " + dest + " (not the destination's failure): " + err.Error()
		return http.StatusServiceUnavailable, wellknown.ErrorOverloaded, b
	case errors.As(err, &mb):
		b.Message = "request body larger than " + strconv.FormatInt(mb.Limit, 10) + " bytes"
		return http.StatusRequestEntityTooLarge, wellknown.ErrorBadRequest, b
	case errors.As(err, new(*headerListError)):
		b.Message = "request header list larger than upstream " + dest + " accepts (its HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE): not sent"
		return http.StatusRequestHeaderFieldsTooLarge, wellknown.ErrorBadRequest, b
	case errors.As(err, new(*bodyTimeoutError)):
		b.Message = "cannot read the request: " + err.Error()
		return http.StatusRequestTimeout, wellknown.ErrorBadRequest, b
	case errors.As(err, new(*clientError)):
		b.Message = "cannot read the request: " + err.Error()
		return http.StatusBadRequest, wellknown.ErrorBadRequest, b
	case errors.As(err, &ue):
		switch ue.class {
		case policy.ClassTimeout:
			b.Message = "upstream " + dest + " did not answer in time"
			return http.StatusGatewayTimeout, wellknown.ErrorTimeout, b
		case policy.ClassConnectFailure:
			b.Message = "cannot connect to " + dest + ": " + ue.err.Error()
			if errors.As(ue.err, new(*unprocessedError)) {
				b.Message = "upstream " + dest + " refused the request before processing it (HTTP/2): " + ue.err.Error()
			}
			return http.StatusBadGateway, wellknown.ErrorConnectFailure, b
		}
		b.Message = "connection to " + dest + " failed before a response: " + ue.err.Error()
		return http.StatusBadGateway, wellknown.ErrorReset, b
	}
	b.Message = err.Error()
	return http.StatusBadGateway, wellknown.ErrorReset, b
}

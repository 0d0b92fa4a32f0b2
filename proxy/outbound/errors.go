package outbound

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/policy"
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
	if errors.As(err, &de) {
		return policy.ClassConnectFailure, false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return policy.ClassTimeout, false
	}
	return policy.ClassReset, false
}

// lateFailure is the status and kind of a response that failed after its
// headers, as the sidecar would have answered had they not gone out.
func lateFailure(c policy.Class) (int, string) {
	if c == policy.ClassTimeout {
		return http.StatusGatewayTimeout, wellknown.ErrorTimeout
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
	case errors.As(err, &mb):
		b.Message = "request body larger than " + strconv.FormatInt(mb.Limit, 10) + " bytes"
		return http.StatusRequestEntityTooLarge, wellknown.ErrorBadRequest, b
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
			return http.StatusBadGateway, wellknown.ErrorConnectFailure, b
		}
		b.Message = "connection to " + dest + " failed before a response: " + ue.err.Error()
		return http.StatusBadGateway, wellknown.ErrorReset, b
	}
	b.Message = err.Error()
	return http.StatusBadGateway, wellknown.ErrorReset, b
}

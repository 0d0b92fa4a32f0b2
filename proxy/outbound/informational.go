package outbound

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
)

// informational bounds the 1xx responses http.Transport reads before the
// final one, and drops the upstream's request ID from them. The Transport stops counting them once a ClientTrace takes
// them, and ReverseProxy's always does (to pass them on): an upstream
// sending 103 after 103 would be read for ever. The fast path counts its
// own; this wrapper costs three allocations, so only the requests that go
// to http.Transport pay them.
type informational struct{ http.RoundTripper }

func (t informational) RoundTrip(req *http.Request) (*http.Response, error) {
	old := httptrace.ContextClientTrace(req.Context())
	if old == nil || old.Got1xxResponse == nil {
		return t.RoundTripper.RoundTrip(req)
	}
	tr := *old
	n := 0
	tr.Got1xxResponse = func(code int, h textproto.MIMEHeader) error {
		if n++; n > max1xx {
			return errTooMany1xx
		}
		// The upstream's request ID never reaches the app: its ID is the
		// sidecar's, in the final answer.
		delete(h, requestIDKey)
		return old.Got1xxResponse(code, h)
	}
	// httptrace.WithClientTrace would call both hooks and drop the error
	// of ours: the trace is replaced instead.
	return t.RoundTripper.RoundTrip(req.WithContext(traceCtx{req.Context(), &tr}))
}

// CloseIdleConnections closes the wrapped transport's kept connections.
func (t informational) CloseIdleConnections() {
	if c, ok := t.RoundTripper.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

var errTooMany1xx = errors.New("more than 5 informational (1xx) responses from upstream")

// traceCtx is a context whose ClientTrace is t.
type traceCtx struct {
	context.Context
	t *httptrace.ClientTrace
}

func (c traceCtx) Value(k any) any {
	v := c.Context.Value(k)
	if _, ok := v.(*httptrace.ClientTrace); ok {
		return c.t
	}
	return v
}

package outbound

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"

	"github.com/minimesh/minimesh/proxy/internal/nobody"
)

// informational bounds the 1xx responses http.Transport reads before the
// final one, and drops the upstream's request ID from them. The Transport
// stops counting them once a ClientTrace takes them, and ReverseProxy's
// always does (to pass them on): an upstream sending 103 after 103 would
// be read for ever. The fast path counts its own; this wrapper costs
// three allocations (its trace, its hook, the request's copy), so only
// the requests that go to http.Transport pay them.
type informational struct{ http.RoundTripper }

func (t informational) RoundTrip(req *http.Request) (*http.Response, error) {
	old := httptrace.ContextClientTrace(req.Context())
	if old == nil || old.Got1xxResponse == nil {
		return t.RoundTripper.RoundTrip(req)
	}
	// httptrace.WithClientTrace would call both hooks and drop the error
	// of ours: the trace is replaced instead.
	c := &traceCtx{Context: req.Context(), t: *old, next: old.Got1xxResponse}
	c.t.Got1xxResponse = c.got1xx
	return t.RoundTripper.RoundTrip(req.WithContext(c))
}

// AppTransport is the inbound path's transport to the app, rt, with the
// outbound path's care for the parts of an answer other than its head
// (one implementation for both): at most max1xx 1xx answers, none with
// the app's X-Request-ID (informational), and none in its trailers
// (dropTrailerID), which HTTP/1.1 carries only after a body of unknown
// length: only those answers' bodies are wrapped, an allocation each.
func AppTransport(rt http.RoundTripper) http.RoundTripper { return appTransport{informational{rt}} }

type appTransport struct{ informational }

func (t appTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := t.informational.RoundTrip(req)
	if err != nil {
		return res, err
	}
	dropTrailerID(res.Trailer) // announced
	if res.ContentLength < 0 && res.StatusCode != http.StatusSwitchingProtocols && res.Body != nil && !nobody.Is(res.Body) {
		res.Body = &trailedBody{res.Body, res}
	}
	return res, nil
}

// trailedBody drops X-Request-ID from res's trailers, which the
// transport fills as the body ends, before the ReverseProxy passes them on.
type trailedBody struct {
	io.ReadCloser
	res *http.Response
}

func (b *trailedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		dropTrailerID(b.res.Trailer)
	}
	return n, err
}

// CloseIdleConnections closes the wrapped transport's kept connections.
func (t informational) CloseIdleConnections() {
	if c, ok := t.RoundTripper.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

var errTooMany1xx = errors.New("more than 5 informational (1xx) responses from upstream")

// traceCtx is a context whose ClientTrace is t, which passes at most
// max1xx 1xx responses on to next, the request's own hook; one
// allocation for the context, the trace and the count.
type traceCtx struct {
	context.Context
	t    httptrace.ClientTrace
	next func(int, textproto.MIMEHeader) error
	n    int
}

func (c *traceCtx) Value(k any) any {
	v := c.Context.Value(k)
	if _, ok := v.(*httptrace.ClientTrace); ok {
		return &c.t
	}
	return v
}

func (c *traceCtx) got1xx(code int, h textproto.MIMEHeader) error {
	return pass1xx(&c.n, c.next, code, h)
}

// pass1xx passes a 1xx response on to next, the request's own hook, the
// *n'th, past max1xx an error (h2Try's too).
func pass1xx(n *int, next func(int, textproto.MIMEHeader) error, code int, h textproto.MIMEHeader) error {
	if *n++; *n > max1xx {
		return errTooMany1xx
	}
	// The peer's request ID never reaches the app (inbound: the caller):
	// its ID is the sidecar's, in the final answer. The hop-by-hop
	// fields are this hop's (RFC 9110 §7.6.1): the ReverseProxy's hook
	// copies a 1xx's every field.
	delete(h, requestIDKey)
	removeHopByHop(http.Header(h), nil)
	return next(code, h)
}

// dropTrailerID drops X-Request-ID from an answer's trailers (Trailer:
// announced, or as they came at the body's end): the ID of an answer is
// the sidecar's, in its header, and a second one in the trailers would
// be the peer's (docs/operations.md, "Debugging a request"). Most answers
// have none: a nil map costs a length check.
func dropTrailerID(t http.Header) {
	if len(t) > 0 {
		delete(t, requestIDKey)
	}
}

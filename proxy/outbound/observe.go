package outbound

import (
	"io"
	"net"
	"net/http"
	"strconv"

	"github.com/minimesh/minimesh/policy"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// countingBody counts the request body bytes the upstream was sent.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

// countingWriter counts the response body bytes the app was sent. Unwrap
// lets ReverseProxy reach the server's Flusher and Hijacker through it.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// spanAttrs are a request span's attributes known at its start, named by
// the stable HTTP semantic conventions.
func (h *Handler) spanAttrs(r *http.Request, st *reqState) []attribute.KeyValue {
	host, port, _ := net.SplitHostPort(st.authority)
	p, _ := strconv.Atoi(port)
	return []attribute.KeyValue{
		attribute.String("http.request.method", spanMethod(r.Method)),
		attribute.String("url.full", "http://"+st.authority+r.URL.EscapedPath()),
		attribute.String("server.address", host),
		attribute.Int("server.port", p),
		attribute.String("minimesh.request_id", st.id),
		attribute.String("minimesh.policy", policyName(st.dest.policy)),
		attribute.String("minimesh.destination", st.dest.name),
	}
}

// spanMethod is the method as the conventions want it: known methods as
// they are, anything else "_OTHER", so clients cannot mint span names.
func spanMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete,
		http.MethodConnect, http.MethodOptions, http.MethodTrace, http.MethodPatch:
		return m
	}
	return "_OTHER"
}

// endSpan ends a request or try span with its outcome: a 5xx or the
// sidecar's own answer is an error; errKind names it.
func endSpan(s trace.Span, code int, errKind, breakerState string) {
	if !s.IsRecording() {
		s.End()
		return
	}
	attrs := make([]attribute.KeyValue, 0, 3)
	if code > 0 && code != statusClientClosed {
		attrs = append(attrs, attribute.Int("http.response.status_code", code))
	}
	if breakerState != "" {
		attrs = append(attrs, attribute.String("minimesh.circuit_breaker.state", breakerState))
	}
	switch {
	case errKind != "":
		attrs = append(attrs, attribute.String("error.type", errKind))
		s.SetStatus(codes.Error, errKind)
	case code == statusClientClosed:
		attrs = append(attrs, attribute.String("error.type", "client-closed"))
		s.SetStatus(codes.Error, "client closed the request")
	case code >= 500:
		attrs = append(attrs, attribute.String("error.type", statusText(code)))
		s.SetStatus(codes.Error, "")
	}
	s.SetAttributes(attrs...)
	s.End()
}

// classErrorType names a failed try for error.type.
func classErrorType(c policy.Class) string {
	switch c {
	case policy.ClassConnectFailure:
		return "connect-failure"
	case policy.ClassTimeout:
		return "timeout"
	case policy.ClassReset:
		return "reset"
	}
	return ""
}

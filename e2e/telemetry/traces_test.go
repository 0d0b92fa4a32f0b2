package telemetry

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/jaeger"
)

// sidecarSpan waits until Jaeger holds the span that the sidecar made as
// the child of parentID in trace traceID.
func sidecarSpan(t *testing.T, j *jaeger.Jaeger, traceID, parentID string) jaeger.Span {
	t.Helper()
	var found jaeger.Span
	spans, err := j.WaitTraceFunc(traceID, 20*time.Second, func(spans []jaeger.Span) bool {
		for _, s := range spans {
			if s.ParentID() == parentID {
				found = s
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("no span with parent %s in trace %s in Jaeger: %v (spans: %+v)", parentID, traceID, err, spans)
	}
	return found
}

// wantTags checks span tags (values as text).
func wantTags(t *testing.T, s jaeger.Span, want map[string]string) {
	t.Helper()
	for k, v := range want {
		got, ok := s.Tag(k)
		if !ok {
			t.Errorf("span %s (%s) lacks tag %s (want %q); tags: %+v", s.SpanID, s.OperationName, k, v, s.Tags)
		} else if got != v {
			t.Errorf("span %s (%s): tag %s = %q, want %q", s.SpanID, s.OperationName, k, got, v)
		}
	}
}

// TestTraceInJaeger sends a request that carries a trace through the
// sidecar and finds the sidecar's CLIENT span in a real Jaeger, as the
// child of the app's span, with the resource and HTTP attributes, and
// checks that the upstream's traceparent names the sidecar's span.
func TestTraceInJaeger(t *testing.T) {
	j := jaeger.StartT(t)
	up := newUpstream(t, http.StatusOK)
	sc := startSidecar(t, sidecarOpts{
		OTLP:    j.OTLPAddr,
		Resolve: map[string]string{"orders-service:8000": up.Addr},
	})

	tp, traceID, parentID := newTraceparent()
	resp, body := sc.get(t, "http://orders-service:8000/orders/42?token=secret", map[string]string{"traceparent": tp})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET through the sidecar: %s %s", resp.Status, body)
	}
	reqID := resp.Header.Get("X-Request-ID")
	if reqID == "" {
		t.Error("response has no X-Request-ID")
	}

	span := sidecarSpan(t, j, traceID, parentID)
	if span.OperationName != "GET" {
		t.Errorf("operation name %q, want GET", span.OperationName)
	}
	if span.TraceID != traceID {
		t.Errorf("span trace id %s, want %s", span.TraceID, traceID)
	}
	if span.Process.ServiceName != serviceName {
		t.Errorf("service name %q, want %s", span.Process.ServiceName, serviceName)
	}
	for k, v := range map[string]string{"k8s.pod.name": podName, "k8s.namespace.name": namespace} {
		if got, _ := span.Process.Tag(k); got != v {
			t.Errorf("process tag %s = %q, want %q; process tags: %+v", k, got, v, span.Process.Tags)
		}
	}
	wantTags(t, span, map[string]string{
		"span.kind":                 "client",
		"http.request.method":       "GET",
		"url.full":                  "http://orders-service:8000/orders/42",
		"server.address":            "orders-service",
		"server.port":               "8000",
		"http.response.status_code": "200",
		"minimesh.request_id":       reqID,
	})
	if v, ok := span.Tag("error"); ok && v == "true" {
		t.Errorf("a 200 span is marked error; tags: %+v", span.Tags)
	}
	for _, kv := range span.Tags {
		if s, ok := kv.Value.(string); ok && strings.Contains(s, "token=secret") {
			t.Errorf("tag %s carries the query string: %q", kv.Key, s)
		}
	}

	t.Logf("span tags: %+v", span.Tags)

	got := up.traceparents()
	if len(got) != 1 {
		t.Fatalf("upstream got %d requests, want 1 (traceparents %q)", len(got), got)
	}
	upTrace, upParent, ok := parseTraceparent(got[0])
	if !ok {
		t.Fatalf("upstream traceparent %q is not a W3C traceparent", got[0])
	}
	if upTrace != traceID {
		t.Errorf("upstream traceparent trace id %s, want %s", upTrace, traceID)
	}
	if upParent != span.SpanID {
		t.Errorf("upstream traceparent parent id %s, want the sidecar's span %s", upParent, span.SpanID)
	}
}

// failingPolicy opens failing-service's breaker on the 2nd failure in a
// row and keeps it open for 30 s (longer than any test here).
const failingPolicy = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: failing, namespace: bakery-ia}
spec:
  service: failing-service
  circuitBreaker:
    consecutiveFailures: 2
    openTimeout: 30s
`

// TestFastFailIsErrorSpan opens a breaker and checks that the request the
// sidecar answers itself (503 circuit-open) is an error span with
// error.type=circuit-open, and that an upstream 5xx is an error span too.
func TestFastFailIsErrorSpan(t *testing.T) {
	j := jaeger.StartT(t)
	up := newUpstream(t, http.StatusInternalServerError)
	sc := startSidecar(t, sidecarOpts{
		OTLP:     j.OTLPAddr,
		Resolve:  map[string]string{"failing-service:8000": up.Addr},
		Policies: failingPolicy,
	})
	const u = "http://failing-service:8000/work"

	tp1, trace1, parent1 := newTraceparent()
	if resp, body := sc.get(t, u, map[string]string{"traceparent": tp1}); resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("1st request: %s %s, want the upstream's 500", resp.Status, body)
	}
	if resp, body := sc.get(t, u, nil); resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("2nd request: %s %s, want the upstream's 500", resp.Status, body)
	}
	tp3, trace3, parent3 := newTraceparent()
	resp, body := sc.get(t, u, map[string]string{"traceparent": tp3})
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Minimesh-Error") != "circuit-open" {
		t.Fatalf("3rd request: %s (X-Minimesh-Error %q) %s, want 503 circuit-open", resp.Status, resp.Header.Get("X-Minimesh-Error"), body)
	}
	if n := len(up.traceparents()); n != 2 {
		t.Errorf("upstream got %d requests, want 2 (the 3rd fails fast)", n)
	}

	span := sidecarSpan(t, j, trace3, parent3)
	wantTags(t, span, map[string]string{
		"error":                     "true",
		"otel.status_code":          "ERROR",
		"error.type":                "circuit-open",
		"http.response.status_code": "503",
		"http.request.method":       "GET",
		"minimesh.request_id":       resp.Header.Get("X-Request-ID"),
	})
	if v, ok := span.Tag("minimesh.circuit_breaker.state"); ok && v != "open" {
		t.Errorf("minimesh.circuit_breaker.state = %q on the fast-failed span, want open", v)
	}

	failed := sidecarSpan(t, j, trace1, parent1)
	wantTags(t, failed, map[string]string{
		"error":                     "true",
		"otel.status_code":          "ERROR",
		"http.response.status_code": "500",
	})
	if v, _ := failed.Tag("error.type"); v != "500" {
		t.Errorf("error.type = %q on the span of an upstream 500, want 500 (the status code, as the HTTP conventions say)", v)
	}
	t.Logf("fast-fail span tags: %+v", span.Tags)
}

// TestTimeoutIsErrorSpan: the sidecar's own 504 is an error span with
// error.type=timeout.
func TestTimeoutIsErrorSpan(t *testing.T) {
	j := jaeger.StartT(t)
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) })
	sc := startSidecar(t, sidecarOpts{
		OTLP:    j.OTLPAddr,
		Resolve: map[string]string{"slow-service:8000": strings.TrimPrefix(slow.URL, "http://")},
		Policies: `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: slow, namespace: bakery-ia}
spec:
  service: slow-service
  timeout: 200ms
`,
	})
	tp, traceID, parentID := newTraceparent()
	resp, body := sc.get(t, "http://slow-service:8000/slow", map[string]string{"traceparent": tp})
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get("X-Minimesh-Error") != "timeout" {
		t.Fatalf("%s (X-Minimesh-Error %q) %s, want 504 timeout", resp.Status, resp.Header.Get("X-Minimesh-Error"), body)
	}
	span := sidecarSpan(t, j, traceID, parentID)
	wantTags(t, span, map[string]string{
		"error":                     "true",
		"otel.status_code":          "ERROR",
		"error.type":                "timeout",
		"http.response.status_code": "504",
		"minimesh.policy":           "slow",
	})
}

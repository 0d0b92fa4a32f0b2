package telemetry

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// TestInjectReplacesCallerB3: a request that arrived with the caller's
// single b3 header, parent and debug flag leaves with the sidecar's span
// in every form, and none of the caller's stale B3 fields (an app's B3
// library reads the single header first: its span would hang under the
// caller's, not the sidecar's).
func TestInjectReplacesCallerB3(t *testing.T) {
	tr, err := NewTracing(TracingConfig{Endpoint: "127.0.0.1:1", SampleRatio: 1, ServiceName: "tenant"}, New(0))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = tr.Shutdown(ctx) // nothing listens at the endpoint
	}()
	const traceID, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	h := http.Header{}
	h.Set("b3", traceID+"-"+callerSpan+"-1-0000000000000001")
	h.Set("X-B3-ParentSpanId", "0000000000000001")
	ctx, p := tr.Begin(context.Background(), h, "GET", trace.SpanKindClient)
	defer p.Span.End()
	out := h.Clone()
	tr.Inject(ctx, p, out)
	own := p.SC.SpanID().String()
	if got := out.Get("X-B3-SpanId"); got != own {
		t.Errorf("X-B3-SpanId %q, want the sidecar's span %s", got, own)
	}
	if got := out.Get("X-B3-TraceId"); got != traceID {
		t.Errorf("X-B3-TraceId %q, want the caller's trace %s", got, traceID)
	}
	if tp := out.Get("Traceparent"); !strings.Contains(tp, own) {
		t.Errorf("traceparent %q does not name the sidecar's span %s", tp, own)
	}
	for _, k := range []string{"b3", "X-B3-ParentSpanId", "X-B3-Flags"} {
		if v := out.Values(k); len(v) != 0 {
			t.Errorf("the caller's %s %q went on beside the sidecar's span", k, v)
		}
	}
}

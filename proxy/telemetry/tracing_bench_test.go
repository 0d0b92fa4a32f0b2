package telemetry

import (
	"context"
	"net/http"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// BenchmarkTracingRequest is the tracing work of one outbound request at
// the sample ratio issue 16's figures use (0.01), as the outbound handler
// and forwarder do it: the app's context extracted (an app that sends
// none, and one that sends a traceparent), the request's span started, a
// try's span only when the request's is recorded, the context injected
// into the upstream's header, the spans ended.
func BenchmarkTracingRequest(b *testing.B) {
	tr, err := NewTracing(TracingConfig{Endpoint: "127.0.0.1:1", SampleRatio: 0.01, ServiceName: "bench"}, New(0))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = tr.Shutdown(ctx) // nothing listens at the endpoint
	})
	for _, c := range []struct {
		name string
		in   http.Header
	}{
		{"none", http.Header{"User-Agent": {"fortio.org/fortio-1.66.5"}}},
		{"traceparent", http.Header{"User-Agent": {"fortio.org/fortio-1.66.5"},
			"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			out := http.Header{}
			b.ReportAllocs()
			for b.Loop() {
				ctx, p := tr.Begin(context.Background(), c.in, "GET", trace.SpanKindClient)
				req := p
				if p.Span != nil {
					ctx, p = tr.Try(ctx, p, "GET")
				}
				clear(out)
				out["User-Agent"] = c.in["User-Agent"]
				tr.Inject(ctx, p, out)
				if req.Span != nil {
					p.Span.End()
					req.Span.End()
				}
			}
		})
	}
}

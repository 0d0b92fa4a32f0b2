package telemetry

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

// TestDoubledTraceparentStartsNewTrace: a request with two traceparent
// fields, or one field holding a comma-joined list (what an intermediary
// makes of two, RFC 9110 §5.3), has an invalid traceparent: W3C Trace
// Context restarts the trace (its test suite's test_traceparent_duplicated
// wants a new trace ID), where the propagator continued the first. The
// request gets a new trace at either sample ratio, and what goes upstream
// is one traceparent of that trace, with none of the app's tracestate.
func TestDoubledTraceparentStartsNewTrace(t *testing.T) {
	const (
		tid1 = "4bf92f3577b34da6a3ce929d0e0e4736"
		tid2 = "0af7651916cd43dd8448eb211c80319c"
		sid  = "00f067aa0ba902b7"
	)
	tp1, tp2 := "00-"+tid1+"-"+sid+"-01", "00-"+tid2+"-"+sid+"-01"
	for _, ratio := range []float64{0, 1} {
		tr, err := NewTracing(TracingConfig{Endpoint: "127.0.0.1:1", SampleRatio: ratio, ServiceName: "t"}, New(0))
		if err != nil {
			t.Fatal(err)
		}
		for name, in := range map[string]http.Header{
			"two fields":          {"Traceparent": {tp1, tp2}, "Tracestate": {"congo=t61rcWkgMzE"}},
			"two fields, garbage": {"Traceparent": {tp1, "garbage"}},
			"comma list":          {"Traceparent": {tp1 + "," + tp2}, "Tracestate": {"congo=t61rcWkgMzE"}},
			"comma list, spaced":  {"Traceparent": {tp1 + ", " + tp2}},
		} {
			t.Run(name, func(t *testing.T) {
				for _, kind := range []trace.SpanKind{trace.SpanKindClient, trace.SpanKindServer} { // outbound, inbound
					_, p := tr.Begin(context.Background(), in, http.MethodGet, kind)
					if p.Span != nil {
						defer p.Span.End()
					}
					got := p.SC.TraceID().String()
					if !p.SC.IsValid() || got == tid1 || got == tid2 {
						t.Fatalf("ratio %v: trace %s, want a new one", ratio, got)
					}
					if p.SC.TraceState().Len() != 0 {
						t.Errorf("ratio %v: the abandoned trace's state %q went on", ratio, p.SC.TraceState())
					}
					if (p.Span != nil) != (ratio == 1) {
						t.Errorf("ratio %v: recorded %v: a new trace is the sampler's to decide", ratio, p.Span != nil)
					}
					out := in.Clone()
					out["X-Request-Id"] = []string{"app-id"}
					tr.Inject(context.Background(), p, out)
					if v := out["Traceparent"]; len(v) != 1 || !strings.Contains(v[0], "-"+got+"-") {
						t.Errorf("ratio %v: upstream gets traceparent %q, want one of trace %s", ratio, v, got)
					}
					if v, ok := out["Tracestate"]; ok {
						t.Errorf("ratio %v: upstream gets the app's tracestate %q beside a new trace", ratio, v)
					}
					if v := out["X-Request-Id"]; len(v) != 1 || v[0] != "app-id" {
						t.Errorf("request ID %q, want it untouched", v)
					}
				}
			})
		}
	}
}

// TestTracestateBounds: the tracestate that goes on with a continued
// trace: several fields are one list (W3C: combined as RFC 9110 §5.3
// says, where the propagator read the first only), members past the 32
// the format allows or a malformed member make the whole state invalid
// and none goes, nor does one without a traceparent; the traceparent is
// continued either way.
func TestTracestateBounds(t *testing.T) {
	tr := testTracing(t)
	const tid = "4bf92f3577b34da6a3ce929d0e0e4736"
	tp := "00-" + tid + "-00f067aa0ba902b7-01"
	var many []string
	for i := range 33 {
		many = append(many, "k"+strings.Repeat("x", i)+"=v")
	}
	for _, c := range []struct {
		name  string
		in    http.Header
		state string // what goes upstream; "" none
	}{
		{"one", http.Header{"Traceparent": {tp}, "Tracestate": {"a=1, b=2"}}, "a=1,b=2"},
		{"two fields", http.Header{"Traceparent": {tp}, "Tracestate": {"a=1", "b=2"}}, "a=1,b=2"},
		{"two fields, one empty", http.Header{"Traceparent": {tp}, "Tracestate": {"", "b=2"}}, "b=2"},
		{"32 members", http.Header{"Traceparent": {tp}, "Tracestate": {strings.Join(many[:32], ",")}}, strings.Join(many[:32], ",")},
		{"33 members", http.Header{"Traceparent": {tp}, "Tracestate": {strings.Join(many, ",")}}, ""},
		{"33 members in two fields", http.Header{"Traceparent": {tp}, "Tracestate": {strings.Join(many[:20], ","), strings.Join(many[20:], ",")}}, ""},
		{"malformed", http.Header{"Traceparent": {tp}, "Tracestate": {"A=1"}}, ""},
		{"alone", http.Header{"Tracestate": {"a=1"}}, ""},
		{"empty members", http.Header{"Traceparent": {tp}, "Tracestate": {"a=1" + strings.Repeat(",", 1000)}}, "a=1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, p := tr.Begin(context.Background(), c.in, http.MethodGet, trace.SpanKindClient)
			if p.Span != nil {
				defer p.Span.End()
			}
			if _, ok := c.in["Traceparent"]; ok && p.SC.TraceID().String() != tid {
				t.Fatalf("trace %s, want the app's %s continued", p.SC.TraceID(), tid)
			}
			out := c.in.Clone()
			tr.Inject(context.Background(), p, out)
			got := strings.Join(out["Tracestate"], ",")
			if got != c.state || len(out["Tracestate"]) > 1 {
				t.Errorf("upstream gets tracestate %q, want %q", out["Tracestate"], c.state)
			}
		})
	}
}

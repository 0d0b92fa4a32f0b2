package telemetry

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// tracingAt is a Tracing whose spans never leave the process: the tests
// below start spans and end none, so nothing reaches its exporter.
func tracingAt(t testing.TB, ratio float64) *Tracing {
	tr, err := NewTracing(TracingConfig{Endpoint: "127.0.0.1:1", SampleRatio: ratio, ServiceName: "t"}, New(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = tr.Shutdown(ctx) // nothing ended, nothing to export
	})
	return tr
}

// sameAsSDK places a request with header in in its trace twice, drawing
// the same random numbers: with Begin, and as the SDK would (the
// propagators' context, then the tracer's span). Both must make the same
// span context and the same decision to record.
func sameAsSDK(t *testing.T, tr *Tracing, in http.Header, kind trace.SpanKind, seed uint64) {
	t.Helper()
	sameAsSDKDrawing(t, tr, in, kind, seed, func() func() uint64 { return rand.New(rand.NewPCG(seed, seed^0x5eed)).Uint64 })
}

// sameAsSDKDrawing is sameAsSDK with the random numbers draw's source
// gives, one source for each of the two.
func sameAsSDKDrawing(t *testing.T, tr *Tracing, in http.Header, kind trace.SpanKind, seed uint64, draw func() func() uint64) {
	t.Helper()
	tr.ids.next = draw()
	ctx, p := tr.Begin(context.Background(), in, "GET", kind)
	tr.ids.next = draw()
	sctx, span := tr.tracer.Start(otelPropagator.Extract(context.Background(), propagation.HeaderCarrier(in)), "GET", trace.WithSpanKind(kind))
	want := span.SpanContext()
	if !p.SC.Equal(want) {
		t.Fatalf("seed %d: Begin's span context %+v, the SDK's %+v", seed, p.SC, want)
	}
	if (p.Span != nil) != span.IsRecording() {
		t.Fatalf("seed %d: Begin records %v, the SDK %v", seed, p.Span != nil, span.IsRecording())
	}
	if p.Span == nil {
		// Begin's own (the SDK makes the span of a B3 caller's request).
		if !p.b3 && trace.SpanContextFromContext(ctx).Equal(p.SC) {
			t.Fatalf("seed %d: a request not recorded has its span context in the context", seed)
		}
		return
	}
	if !p.Span.SpanContext().Equal(p.SC) {
		t.Fatalf("seed %d: Begin's span %+v, its place %+v", seed, p.Span.SpanContext(), p.SC)
	}
	// The context goes on as the SDK's does: a try's span hangs under it
	// and is the same span for both.
	if got, want := trace.SpanContextFromContext(ctx), trace.SpanContextFromContext(sctx); !got.Equal(want) {
		t.Fatalf("seed %d: Begin's context holds %+v, the SDK's %+v", seed, got, want)
	}
	if _, ok := ctx.Value(drawnKey{}).(drawn); ok {
		t.Fatalf("seed %d: the IDs drawn for the SDK's span went on in the request's context", seed)
	}
}

// TestBeginAsSDK: a request not recorded gets the span context the SDK
// would have given it without the SDK, and every request the SDK's
// decision — for each kind of context an app sends, at every ratio.
func TestBeginAsSDK(t *testing.T) {
	const tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	headers := map[string]http.Header{
		"none":                {"User-Agent": {"curl/8"}},
		"traceparent sampled": {"Traceparent": {"00-" + tid + "-" + sid + "-01"}},
		"traceparent not":     {"Traceparent": {"00-" + tid + "-" + sid + "-00"}},
		"traceparent random":  {"Traceparent": {"00-" + tid + "-" + sid + "-02"}},
		"traceparent + state": {"Traceparent": {"00-" + tid + "-" + sid + "-00"}, "Tracestate": {"vendor=v1,other=o2"}},
		"state alone":         {"Tracestate": {"vendor=v1"}},
		"traceparent bad":     {"Traceparent": {"00-" + tid + "-" + sid}},
		"b3 single debug":     {"B3": {tid + "-" + sid + "-d"}},
		"b3 single deferred":  {"B3": {tid + "-" + sid}},
		"b3 multi not":        {"X-B3-Traceid": {tid}, "X-B3-Spanid": {sid}, "X-B3-Sampled": {"0"}},
		"b3 sampled alone":    {"X-B3-Sampled": {"1"}},
		"b3 bad":              {"B3": {"nonsense"}},
		"both kinds":          {"Traceparent": {"00-" + tid + "-" + sid + "-00"}, "B3": {tid + "-" + sid + "-1"}},
	}
	for _, ratio := range []float64{0, 0.01, 0.5, 1} {
		tr := tracingAt(t, ratio)
		for name, in := range headers {
			t.Run(fmt.Sprint(ratio, " ", name), func(t *testing.T) {
				for seed := range uint64(64) {
					sameAsSDK(t, tr, in, trace.SpanKindClient, seed)
				}
			})
		}
	}
	// A new trace's ID on the ratio's bound and just under it: recorded
	// only under it (the bound is excluded), by both.
	for _, c := range []struct {
		low    uint64 // the ID's second word, as drawn (native byte order)
		record bool
	}{
		{0x80, false},               // big-endian 0x8000…00: x = 1<<62, the bound at 0.5
		{0xfeffffffffffff7f, true},  // big-endian 0x7fff…fe: x = 1<<62 − 1
		{0x0100000000000080, false}, // big-endian 0x8000…01: x = 1<<62
	} {
		tr := tracingAt(t, 0.5)
		draw := func() func() uint64 {
			words := []uint64{1, c.low, 1}
			return func() uint64 { w := words[0]; words = words[1:]; return w }
		}
		sameAsSDKDrawing(t, tr, http.Header{}, trace.SpanKindClient, 0, draw)
		tr.ids.next = draw()
		if _, p := tr.Begin(context.Background(), http.Header{}, "GET", trace.SpanKindClient); (p.Span != nil) != c.record {
			t.Errorf("trace ID %s at 0.5: recorded %v, want %v", p.SC.TraceID(), p.Span != nil, c.record)
		}
	}
	// Both decisions, many times over: at 0.5, 64 seeds with no context
	// record some requests and leave out others.
	tr := tracingAt(t, 0.5)
	recorded := 0
	for seed := range uint64(64) {
		tr.ids.next = rand.New(rand.NewPCG(seed, seed^0x5eed)).Uint64
		if _, p := tr.Begin(context.Background(), http.Header{}, "GET", trace.SpanKindServer); p.Span != nil {
			recorded++
		}
	}
	if recorded == 0 || recorded == 64 {
		t.Errorf("at a ratio of 0.5, %d of 64 new traces recorded", recorded)
	}
}

// FuzzBeginAsSDK holds Begin to the SDK for any trace fields an app may
// send, any ratio and any random draw.
func FuzzBeginAsSDK(f *testing.F) {
	const tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	f.Add(uint64(1), uint8(2), "00-"+tid+"-"+sid+"-00", "vendor=v1", "", "")
	f.Add(uint64(2), uint8(1), "", "", tid+"-"+sid+"-d", "")
	f.Add(uint64(3), uint8(3), "", "", "", "1")
	ratios := []float64{0, 0.01, 0.5, 1, 1e-9, 0.999999}
	tracings := make([]*Tracing, len(ratios))
	for i, r := range ratios {
		tracings[i] = tracingAt(f, r)
	}
	f.Fuzz(func(t *testing.T, seed uint64, ratio uint8, traceparent, tracestate, single, sampled string) {
		in := http.Header{}
		for k, v := range map[string]string{"Traceparent": traceparent, "Tracestate": tracestate, "B3": single, "X-B3-Sampled": sampled} {
			if v != "" {
				in[k] = []string{v}
			}
		}
		sameAsSDK(t, tracings[int(ratio)%len(tracings)], in, trace.SpanKindClient, seed)
	})
}

package telemetry

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// otelPropagator is what Tracing's Extract and Inject stand for: the
// composite of the W3C and B3 propagators through http.Header, as the
// sidecar used them before it read and wrote the fields itself.
var otelPropagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader)))

func otelInject(ctx context.Context, h http.Header) {
	for _, k := range staleB3 {
		delete(h, k)
	}
	otelPropagator.Inject(ctx, propagation.HeaderCarrier(h))
}

// sameAsPropagators extracts in and injects what it read (the caller's
// span context, as if it were the sidecar's) into a copy of in,
// both ways, and reports any difference in what would be sent upstream.
func sameAsPropagators(t *testing.T, tr *Tracing, in http.Header) {
	t.Helper()
	ours, theirs := in.Clone(), in.Clone()
	ctx, psc, b3 := tr.extract(context.Background(), in)
	tr.Inject(ctx, Place{SC: psc, b3: b3}, ours)
	// The propagators, but for the W3C Trace Context rules they leave
	// out (traceparent_dup_test.go): two traceparent fields are none,
	// several tracestate fields are one list, and a tracestate goes on
	// only with the traceparent it came with.
	model := in.Clone()
	if len(model["Traceparent"]) > 1 {
		delete(model, "Traceparent")
	}
	if states := model["Tracestate"]; len(states) > 1 {
		model["Tracestate"] = []string{strings.Join(states, ",")}
	}
	octx := otelPropagator.Extract(context.Background(), propagation.HeaderCarrier(model))
	otelInject(octx, theirs)
	if trace.SpanContextFromContext(octx).TraceState().Len() == 0 {
		delete(theirs, "Tracestate")
	}
	if !equalHeaders(ours, theirs) {
		t.Errorf("from %v\nsent %v\nthe propagators %v", in, ours, theirs)
	}
}

func equalHeaders(a, b http.Header) bool {
	return maps.EqualFunc(a, b, func(x, y []string) bool { return slices.Equal(x, y) })
}

func testTracing(t testing.TB) *Tracing {
	tr, err := NewTracing(TracingConfig{Endpoint: "127.0.0.1:1", SampleRatio: 0.5, ServiceName: "t"}, New(0))
	if err != nil {
		t.Fatal(err)
	}
	return tr // never started a recording span: nothing to export, nothing to shut down
}

// TestPropagationAsPropagators: what the sidecar reads from an app's
// request and sends on is what OpenTelemetry's W3C and B3 propagators
// would, for every kind of trace context an app sends (and bad ones).
func TestPropagationAsPropagators(t *testing.T) {
	tr := testTracing(t)
	const tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	for name, in := range map[string]http.Header{
		"none":                  {"User-Agent": {"curl/8"}},
		"traceparent sampled":   {"Traceparent": {"00-" + tid + "-" + sid + "-01"}},
		"traceparent not":       {"Traceparent": {"00-" + tid + "-" + sid + "-00"}},
		"traceparent random":    {"Traceparent": {"00-" + tid + "-" + sid + "-03"}},
		"traceparent + state":   {"Traceparent": {"00-" + tid + "-" + sid + "-01"}, "Tracestate": {"vendor=v1,other=o2"}},
		"state alone":           {"Tracestate": {"vendor=v1"}},
		"traceparent bad":       {"Traceparent": {"00-" + tid + "-" + sid}},
		"traceparent upper":     {"Traceparent": {"00-4BF92F3577B34DA6A3CE929D0E0E4736-" + sid + "-01"}},
		"traceparent zero":      {"Traceparent": {"00-00000000000000000000000000000000-" + sid + "-01"}},
		"traceparent future":    {"Traceparent": {"01-" + tid + "-" + sid + "-01-extra"}},
		"two traceparents":      {"Traceparent": {"00-" + tid + "-" + sid + "-01", "garbage"}},
		"b3 single":             {"B3": {tid + "-" + sid + "-1"}},
		"b3 single debug":       {"B3": {tid + "-" + sid + "-d"}},
		"b3 single deferred":    {"B3": {tid + "-" + sid}},
		"b3 single with parent": {"B3": {tid + "-" + sid + "-0-0000000000000001"}},
		"b3 multi":              {"X-B3-Traceid": {tid}, "X-B3-Spanid": {sid}, "X-B3-Sampled": {"1"}},
		"b3 multi debug":        {"X-B3-Traceid": {tid}, "X-B3-Spanid": {sid}, "X-B3-Flags": {"1"}},
		"b3 multi deferred":     {"X-B3-Traceid": {tid}, "X-B3-Spanid": {sid}},
		"b3 multi 64-bit":       {"X-B3-Traceid": {tid[16:]}, "X-B3-Spanid": {sid}, "X-B3-Sampled": {"0"}},
		"b3 sampled alone":      {"X-B3-Sampled": {"1"}},
		"b3 bad":                {"B3": {"nonsense"}},
		"both kinds":            {"Traceparent": {"00-" + tid + "-" + sid + "-00"}, "B3": {"a3ce929d0e0e47364bf92f3577b34da6-" + sid + "-1"}},
	} {
		t.Run(name, func(t *testing.T) { sameAsPropagators(t, tr, in) })
	}
}

// TestInjectFieldsAsPropagators: the sidecar's own span contexts, as the
// SDK makes them (sampled or not, with a caller's trace state), go out
// as the propagators would write them.
func TestInjectFieldsAsPropagators(t *testing.T) {
	tr := testTracing(t)
	ts, err := trace.ParseTraceState("vendor=v1")
	if err != nil {
		t.Fatal(err)
	}
	for _, flags := range []trace.TraceFlags{0, trace.FlagsSampled, trace.FlagsRandom, trace.FlagsSampled | trace.FlagsRandom, 0xff} {
		for _, state := range []trace.TraceState{{}, ts} {
			sc := trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: trace.TraceID{0x4b, 0xf9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0xff}, SpanID: trace.SpanID{0, 0xf0, 0x67, 1, 2, 3, 4, 0xb7},
				TraceFlags: flags, TraceState: state,
			})
			ctx := trace.ContextWithSpanContext(context.Background(), sc)
			app := http.Header{"Traceparent": {"00-stale"}, "B3": {"stale"}, "X-B3-Flags": {"1"}, "Accept": {"*/*"}}
			ours, theirs := app.Clone(), app.Clone()
			tr.Inject(ctx, Place{SC: sc}, ours)
			otelInject(ctx, theirs)
			if !equalHeaders(ours, theirs) {
				t.Errorf("flags %02x, state %q: sent %v, the propagators %v", byte(flags), state, ours, theirs)
			}
		}
	}
}

// FuzzPropagation holds Extract and Inject to the propagators for any
// trace fields an app may send.
func FuzzPropagation(f *testing.F) {
	const tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	f.Add("00-"+tid+"-"+sid+"-01", "vendor=v1", "", "", "", "", "")
	f.Add("", "", tid+"-"+sid+"-d", "", "", "", "")
	f.Add("", "", "", tid, sid, "1", "")
	f.Add("", "", "", tid, sid, "", "1")
	tr := testTracing(f)
	f.Fuzz(func(t *testing.T, traceparent, tracestate, single, traceID, spanID, sampled, flags string) {
		in := http.Header{}
		for k, v := range map[string]string{"Traceparent": traceparent, "Tracestate": tracestate, "B3": single,
			"X-B3-Traceid": traceID, "X-B3-Spanid": spanID, "X-B3-Sampled": sampled, "X-B3-Flags": flags} {
			if v != "" {
				in[k] = []string{v}
			}
		}
		sameAsPropagators(t, tr, in)
	})
}

// TestMayCarry: every field the propagators read (their own list) is one
// MayCarry sees, or one that alone carries nothing (Tracestate without a
// Traceparent): lines MayCarry clears give Begin nothing to read.
func TestMayCarry(t *testing.T) {
	const tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	values := []string{"00-" + tid + "-" + sid + "-01", tid + "-" + sid + "-1", tid, sid, "1", "d", "vendor=v1"}
	// The propagators' lists, with B3's single field, and Begin's own.
	fields := append(otelPropagator.Fields(), b3.New(b3.WithInjectEncoding(b3.B3SingleHeader)).Fields()...)
	fields = append(fields, b3Keys[:]...)
	for _, f := range fields {
		key := http.CanonicalHeaderKey(f)
		if MayCarry("X-Other: 1\r\n" + key + ": v\r\n") {
			continue
		}
		for _, v := range values {
			ctx := otelPropagator.Extract(context.Background(), propagation.HeaderCarrier(http.Header{key: {v}}))
			if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
				t.Errorf("MayCarry clears %q, from which the propagators read %v", key+": "+v, sc)
			}
		}
	}
	for _, lines := range []string{"", "Accept: */*\r\nUser-Agent: u\r\n", "Tracestate: a=1\r\nX-Trace: 1\r\n"} {
		if MayCarry(lines) {
			t.Errorf("MayCarry(%q): it holds no field Begin reads", lines)
		}
	}
}

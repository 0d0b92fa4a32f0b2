package telemetry

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/minimesh/minimesh/proxy/internal/hexpair"
	"github.com/minimesh/minimesh/wellknown"
	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// TracingConfig says where spans go and which requests are traced.
type TracingConfig struct {
	// Endpoint is the OTLP/gRPC collector, host:port. Empty: no tracing.
	Endpoint string
	// SampleRatio is the share of new traces recorded; a request that
	// arrives with a trace context follows its parent's decision.
	SampleRatio float64
	ServiceName string
	PodName     string
	Namespace   string
	// QueueSize bounds the spans waiting for export; past it spans are
	// dropped and counted rather than slowing requests.
	QueueSize int
	Logger    *slog.Logger
}

// Tracing makes the sidecar's spans and carries trace context in and out
// of requests. A nil *Tracing means tracing is off.
type Tracing struct {
	tracer trace.Tracer
	// W3C first, then B3 (for apps instrumented with Zipkin-era
	// libraries): a composite propagator's order, B3's context winning
	// where a request carries both. Injection writes both, so either
	// kind of upstream continues.
	w3c, b3 propagation.TextMapPropagator
	tp      *sdktrace.TracerProvider
	ids     *idSource
	bound   uint64 // ratioBound of the sample ratio
}

// NewTracing starts the exporter. It does not wait for the collector: a
// collector that is down costs dropped spans, never a slower request.
func NewTracing(cfg TracingConfig, m *Metrics) (*Tracing, error) {
	if cfg.Endpoint == "" {
		return nil, nil
	}
	if cfg.SampleRatio < 0 || cfg.SampleRatio > 1 {
		return nil, fmt.Errorf("trace sample ratio %v: want 0 to 1", cfg.SampleRatio)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	// The exporter dials when it first exports: a collector that is
	// down costs dropped spans, never a slower start or request.
	return newTracing(cfg, newOTLPExporter(cfg.Endpoint), m), nil
}

// newTracing is NewTracing's, with spans going to exp.
func newTracing(cfg TracingConfig, exp sdktrace.SpanExporter, m *Metrics) *Tracing {
	attrs := []attribute.KeyValue{
		attribute.String("service.name", orDefault(cfg.ServiceName, "minimesh-proxy")),
		attribute.String("service.version", wellknown.Version),
		attribute.String("telemetry.sdk.language", "go"),
	}
	if cfg.PodName != "" {
		attrs = append(attrs, attribute.String("k8s.pod.name", cfg.PodName))
	}
	if cfg.Namespace != "" {
		attrs = append(attrs, attribute.String("k8s.namespace.name", cfg.Namespace))
	}
	ids := new(idSource)
	proc := newQueueProcessor(exp, cfg.QueueSize, m.spansDropped, cfg.Logger)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(resource.NewSchemaless(attrs...)),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
		sdktrace.WithSpanProcessor(proc),
		sdktrace.WithIDGenerator(ids),
	)
	return &Tracing{
		tracer: tp.Tracer("github.com/minimesh/minimesh/proxy"),
		w3c:    propagation.TraceContext{},
		b3:     b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader)),
		tp:     tp,
		ids:    ids,
		bound:  ratioBound(cfg.SampleRatio),
	}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// A Place is a request's place in its trace: its span if it is recorded,
// and the span context it sends on either way.
type Place struct {
	// Span is the request's span; nil for a request not recorded (99 in
	// 100 at a sample ratio of 0.01).
	Span trace.Span
	// SC is Span's context or, for a request not recorded, the one the
	// SDK would have given its span: the caller's trace (or a new one), a
	// new span ID, not sampled.
	SC trace.SpanContext
	// b3 marks a context the B3 propagator read the request into: it may
	// hold a debug flag or a deferred decision of the caller's, which
	// only that propagator knows how to send on (Inject).
	b3 bool
}

// Begin places a request in its trace: the app's, when its header
// carries one, else a new one. A request the sampler records gets an SDK
// span named name, of kind; one it leaves out gets only the span context
// the SDK would have made for it, without the SDK: its span, options,
// context and sampler cost a request at a ratio of 0.01 more than all its
// other tracing work (docs/benchmarks.md, "Requests not recorded").
// TestBeginAsSDK holds the two to the same IDs, flags and decision.
//
// ctx must hold no span: the parent is the one in h. For a request not
// recorded the context returned need not hold its span (it holds at most
// the caller's, as read from h, unless the SDK made the span for a B3
// caller): p.SC is its span context, for Inject and the log. For a recorded new trace the SDK's span goes on in ctx
// without the context its Start returned (which carried the IDs drawn):
// with runtime/trace on, the SDK's task for the span is not passed on, and
// a try's task does not nest under it.
func (t *Tracing) Begin(ctx context.Context, h http.Header, name string, kind trace.SpanKind) (context.Context, Place) {
	name = SpanName(name)
	ctx, psc, b3 := t.extract(ctx, h)
	if b3 {
		// The B3 propagator's flags live in ctx, for the SDK's sampler.
		ctx, span := t.tracer.Start(ctx, name, kindOption(kind)...)
		return ctx, place(span, true)
	}
	// ParentBased(TraceIDRatioBased), NewTracing's sampler: a caller's
	// decision stands; a new trace is recorded when its ID falls under
	// the ratio's bound.
	if psc.IsValid() {
		if psc.IsSampled() {
			ctx, span := t.tracer.Start(ctx, name, kindOption(kind)...)
			return ctx, place(span, false)
		}
		return ctx, Place{SC: trace.NewSpanContext(trace.SpanContextConfig{
			TraceID:    psc.TraceID(),
			SpanID:     t.ids.spanID(),
			TraceFlags: psc.TraceFlags() &^ trace.FlagsSampled,
			TraceState: psc.TraceState(),
		})}
	}
	tid, sid := t.ids.newIDs()
	if !t.recordsNew(tid) {
		return ctx, Place{SC: trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid})}
	}
	// The SDK's span gets the IDs the decision was made on (idSource),
	// and its sampler decides the same; the context returned does not
	// carry them on to a span started from it.
	_, span := t.tracer.Start(context.WithValue(ctx, drawnKey{}, drawn{tid, sid}), name, kindOption(kind)...)
	return trace.ContextWithSpan(ctx, span), place(span, false)
}

// SpanName is the name of a request's span, by the HTTP semantic
// conventions: its method when it is one of the standard ones, else
// "HTTP" (their name for a method reported as "_OTHER"). A span's name
// is what trace backends index and list (Jaeger's operations): named by
// any method an app or a caller sends ("FOO", "X1", "X2"...), the names
// would grow without bound. Begin and Try name their spans so, whatever
// name they are given.
func SpanName(method string) string {
	if methodIndex(method) < len(methods) {
		return method
	}
	return "HTTP"
}

// SpanMethod is a span's http.request.method, as the HTTP semantic
// conventions want it: a standard method as it is, any other "_OTHER",
// so that callers cannot mint values; other says so, and the span then
// carries the method itself in http.request.method_original.
func SpanMethod(method string) (value string, other bool) {
	if methodIndex(method) < len(methods) {
		return method, false
	}
	return "_OTHER", true
}

// place is the Place of an SDK span: Span nil unless it is recorded.
func place(span trace.Span, b3 bool) Place {
	p := Place{SC: span.SpanContext(), b3: b3}
	if span.IsRecording() {
		p.Span = span
	}
	return p
}

// recordsNew is TraceIDRatioBased's decision for a new trace with ID tid.
func (t *Tracing) recordsNew(tid trace.TraceID) bool {
	return binary.BigEndian.Uint64(tid[8:16])>>1 < t.bound
}

// ratioBound is TraceIDRatioBased's bound for ratio, 0 to 1: a trace ID's
// last 63 bits under it are recorded (at 1, every one).
func ratioBound(ratio float64) uint64 { return uint64(ratio * (1 << 63)) }

// Try starts the span of one try of a recorded request, under the
// request's span (in ctx): with retries, the upstream's server span hangs
// under the try it served.
func (t *Tracing) Try(ctx context.Context, p Place, name string) (context.Context, Place) {
	ctx, span := t.tracer.Start(ctx, SpanName(name), clientKind...)
	return ctx, place(span, p.b3)
}

// extract reads the app's trace context from h: psc is invalid when h
// holds none; ctx holds it for the SDK.
func (t *Tracing) extract(ctx context.Context, h http.Header) (_ context.Context, psc trace.SpanContext, b3 bool) {
	if h == nil {
		return ctx, psc, false // a caller's lines without any (MayCarry)
	}
	// More than one traceparent field is an invalid traceparent (W3C
	// Trace Context: the test suite's test_traceparent_duplicated wants a
	// new trace ID), where the propagator takes the first: the request
	// starts a new trace, and its tracestate, which belongs to the trace
	// it left, is not read (docs/operations.md, "Traces"). Its request ID
	// is another matter and stays.
	if tp := h["Traceparent"]; len(tp) == 1 {
		ctx = t.w3c.Extract(ctx, headerCarrier(h))
		psc = trace.SpanContextFromContext(ctx)
		if states := h["Tracestate"]; len(states) > 1 && psc.IsValid() {
			// Several tracestate fields are one list (W3C, RFC 9110
			// §5.3), of which the propagator reads the first field only.
			ts, _ := trace.ParseTraceState(strings.Join(states, ","))
			psc = psc.WithTraceState(compact(ts))
			ctx = trace.ContextWithRemoteSpanContext(ctx, psc)
		} else if ts := psc.TraceState(); ts.Len() > 0 && len(headerCarrier(h).Get("tracestate")) > stateText(ts) {
			psc = psc.WithTraceState(compact(ts))
			ctx = trace.ContextWithRemoteSpanContext(ctx, psc)
		}
	}
	// Without a B3 field the B3 propagator would only note in a new
	// context that the sampling decision is not deferred, which is what
	// its absence says: one allocation a request, for nothing.
	for _, k := range b3Keys {
		if len(h[k]) > 0 {
			ctx = t.b3.Extract(ctx, headerCarrier(h))
			return ctx, trace.SpanContextFromContext(ctx), true
		}
	}
	return ctx, psc, false
}

// stateText is the length of ts as a header value without spaces or
// empty members: what its members take.
func stateText(ts trace.TraceState) (n int) {
	ts.Walk(func(k, v string) bool {
		n += len(k) + len(v) + 2
		return true
	})
	return n - 1
}

// compact is ts in a string of its own. A trace state's members are
// substrings of the header it was read from, which W3C lets hold empty
// members and spaces around them: "a=b" and 60 KB of commas is a valid
// trace state of one member that held its 60 KB in every span made in it
// (and in the span queue for as long as the span waits there: 2,048 such
// spans took 300 MB).
func compact(ts trace.TraceState) trace.TraceState {
	c, err := trace.ParseTraceState(ts.String())
	if err != nil {
		return trace.TraceState{} // not reached: ts parsed already
	}
	return c
}

// b3Keys are the fields the B3 propagator reads, as header map keys.
var b3Keys = [...]string{"B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled", "X-B3-Flags", "X-B3-Parentspanid"}

// MayCarry reports whether header lines, "Name: value" CRLF each with
// every name canonical (as a header map's keys), may hold a field Begin
// reads: false only when they surely hold none, so that a caller with
// such lines passes Begin no header and saves its seven look-ups (every
// name Begin reads has "Traceparent" or "B3" in it; a value with those
// letters only costs the look-ups).
func MayCarry(lines string) bool {
	return strings.Contains(lines, "B3") || strings.Contains(lines, "Traceparent")
}

// Inject writes p's span context into an outgoing request, so the
// upstream's server span hangs under the sidecar's. The B3 fields it
// does not write go first: a caller's single b3 header (which B3
// libraries read before the others), its parent and debug flag would
// otherwise name the caller's span beside the sidecar's. ctx is the
// request's (the B3 propagator's flags are there).
func (t *Tracing) Inject(ctx context.Context, p Place, h http.Header) {
	var room [5]Field
	if fs, ok := Fields(p, &room); ok {
		SetFields(h, fs)
		return
	}
	for _, k := range staleB3 {
		delete(h, k)
	}
	delete(h, "Tracestate") // the propagator writes one only when it has one (SetFields)
	ctx = trace.ContextWithSpanContext(ctx, p.SC)
	t.w3c.Inject(ctx, headerCarrier(h))
	t.b3.Inject(ctx, headerCarrier(h))
}

// A Field is a trace field of an outgoing request, named as a header map
// holds it.
type Field struct{ Key, Value string }

// Fields are the fields Inject writes for p, in room, sorted by key as a
// header map's keys sort: for a writer of request heads that writes them
// without the map (outbound's fast transport), which then leaves out the
// app's fields they replace (Replaces). ok is false when only Inject can
// write them: a caller's B3 flags to send on, or no valid span context.
// The values are one string and its parts: one allocation (two with a
// trace state), where the propagators make seven. TestInjectFieldsAsPropagators holds them to
// the propagators.
func Fields(p Place, room *[5]Field) (fs []Field, ok bool) {
	sc := p.SC
	if p.b3 || !sc.IsValid() {
		return nil, false
	}
	// The W3C flags the specification defines: sampled and random.
	flags := byte(sc.TraceFlags() & (trace.FlagsSampled | trace.FlagsRandom))
	tid, sid := sc.TraceID(), sc.SpanID()
	var b [56]byte // "00-" trace "-" span "-" flags, and B3's sampled
	b[0], b[1], b[2] = '0', '0', '-'
	hexpair.Encode(b[3:35], tid[:])
	b[35] = '-'
	hexpair.Encode(b[36:52], sid[:])
	fl := hexpair.Of(flags)
	b[52], b[53], b[54] = '-', fl[0], fl[1]
	b[55] = '0'
	if sc.IsSampled() {
		b[55] = '1'
	}
	v := string(b[:])
	fs = append(room[:0], Field{"Traceparent", v[:55]})
	if ts := sc.TraceState().String(); ts != "" {
		fs = append(fs, Field{"Tracestate", ts})
	}
	return append(fs, Field{"X-B3-Sampled", v[55:]}, Field{"X-B3-Spanid", v[36:52]}, Field{"X-B3-Traceid", v[3:35]}), true
}

// SetFields writes fs, made by Fields, into h as Inject does: the app's
// fields they replace go.
func SetFields(h http.Header, fs []Field) {
	for _, k := range staleB3 {
		delete(h, k)
	}
	// The app's tracestate goes with the traceparent it came with: when
	// the sidecar's context has none (a new trace, the app's traceparent
	// invalid or doubled, or a tracestate that did not parse), none goes,
	// not the app's beside another trace's traceparent (W3C Trace
	// Context: a restart cleans up tracestate).
	delete(h, "Tracestate")
	v := make([]string, len(fs))
	for i, f := range fs {
		v[i] = f.Value
		// Capacity one each: an append to one never writes into the next.
		h[f.Key] = v[i : i+1 : i+1]
	}
}

// Replaces says whether the app's field key, as a header map holds it,
// is replaced or removed where fs are written: Inject's own fields, the
// B3 fields it leaves out, and the app's trace state.
func Replaces(fs []Field, key string) bool {
	switch key {
	case "Traceparent", "X-B3-Sampled", "X-B3-Spanid", "X-B3-Traceid", "B3", "X-B3-Parentspanid", "X-B3-Flags":
		return true
	case "Tracestate":
		return true // replaced when fs hold one, else dropped (SetFields)
	}
	return false
}

// staleB3 are the B3 fields the propagator's multiple-header injection
// leaves as they were, as http.Header holds them.
var staleB3 = [...]string{"B3", "X-B3-Parentspanid", "X-B3-Flags"}

// The options of a span without attributes, made once: an option is an
// interface value, and one made per span is an allocation.
var (
	clientKind = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)}
	serverKind = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}
)

func kindOption(k trace.SpanKind) []trace.SpanStartOption {
	if k == trace.SpanKindServer {
		return serverKind
	}
	return clientKind
}

// Shutdown exports what is queued, within ctx.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

package telemetry

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"

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
	exp := newOTLPExporter(cfg.Endpoint)
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
	proc := newQueueProcessor(exp, cfg.QueueSize, m.spansDropped, cfg.Logger)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(resource.NewSchemaless(attrs...)),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
		sdktrace.WithSpanProcessor(proc),
	)
	return &Tracing{
		tracer: tp.Tracer("github.com/minimesh/minimesh/proxy"),
		w3c:    propagation.TraceContext{},
		b3:     b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader)),
		tp:     tp,
	}, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Extract continues the app's trace when its request carries one.
func (t *Tracing) Extract(ctx context.Context, h http.Header) context.Context {
	if len(h["Traceparent"]) > 0 {
		ctx = t.w3c.Extract(ctx, headerCarrier(h))
	}
	// Without a B3 field the B3 propagator would only note in a new
	// context that the sampling decision is not deferred, which is what
	// its absence says: one allocation a request, for nothing.
	for _, k := range b3Keys {
		if len(h[k]) > 0 {
			ctx = t.b3.Extract(ctx, headerCarrier(h))
			return context.WithValue(ctx, b3Extracted{}, true)
		}
	}
	return ctx
}

// b3Extracted marks a context the B3 propagator read a request into: it
// may hold a debug flag or a deferred decision of the caller's, which
// only that propagator knows how to send on (Inject).
type b3Extracted struct{}

// b3Keys are the fields the B3 propagator reads, as header map keys.
var b3Keys = [...]string{"B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled", "X-B3-Flags", "X-B3-Parentspanid"}

// Inject writes the current span's context into an outgoing request, so
// the upstream's server span hangs under the sidecar's. The B3 fields it
// does not write go first: a caller's single b3 header (which B3
// libraries read before the others), its parent and debug flag would
// otherwise name the caller's span beside the sidecar's.
func (t *Tracing) Inject(ctx context.Context, h http.Header) {
	for _, k := range staleB3 {
		delete(h, k)
	}
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || ctx.Value(b3Extracted{}) != nil {
		t.w3c.Inject(ctx, headerCarrier(h))
		t.b3.Inject(ctx, headerCarrier(h))
		return
	}
	injectFields(sc, h)
}

// injectFields writes what the propagators would for sc, a valid span
// context with no B3 flag of a caller's to send on, in two allocations
// where they make seven: the four fields' values are one string and its
// parts, in one slice. TestInjectFieldsAsPropagators holds it to them.
func injectFields(sc trace.SpanContext, h http.Header) {
	if ts := sc.TraceState().String(); ts != "" {
		h["Tracestate"] = []string{ts}
	}
	// The W3C flags the specification defines: sampled and random.
	flags := byte(sc.TraceFlags() & (trace.FlagsSampled | trace.FlagsRandom))
	tid, sid := sc.TraceID(), sc.SpanID()
	var b [55]byte // "00-" trace "-" span "-" flags
	b[0], b[1], b[2] = '0', '0', '-'
	hex.Encode(b[3:35], tid[:])
	b[35] = '-'
	hex.Encode(b[36:52], sid[:])
	b[52], b[53], b[54] = '-', hexDigits[flags>>4], hexDigits[flags&0xf]
	tp := string(b[:])
	sampled := "0"
	if sc.IsSampled() {
		sampled = "1"
	}
	v := make([]string, 4)
	v[0], v[1], v[2], v[3] = tp, tp[3:35], tp[36:52], sampled
	// Capacity one each: an append to one never writes into the next.
	h["Traceparent"], h["X-B3-Traceid"], h["X-B3-Spanid"], h["X-B3-Sampled"] = v[0:1:1], v[1:2:2], v[2:3:3], v[3:4:4]
}

// staleB3 are the B3 fields the propagator's multiple-header injection
// leaves as they were, as http.Header holds them.
var staleB3 = [...]string{"B3", "X-B3-Parentspanid", "X-B3-Flags"}

// Start starts a CLIENT span.
func (t *Tracing) Start(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	if len(attrs) == 0 {
		return t.tracer.Start(ctx, name, clientKind...)
	}
	return t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
}

// StartServer starts a SERVER span: a request into the pod, which the
// inbound listener received for the app (docs/interception.md, "Inbound").
func (t *Tracing) StartServer(ctx context.Context, name string) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, name, serverKind...)
}

// The options of a span without attributes, made once: an option is an
// interface value, and one made per span is an allocation.
var (
	clientKind = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)}
	serverKind = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}
)

// Shutdown exports what is queued, within ctx.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

package telemetry

import (
	"context"
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
	prop   propagation.TextMapPropagator
	tp     *sdktrace.TracerProvider
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
		// W3C first; B3 for apps instrumented with Zipkin-era libraries.
		// Injection writes both, so either kind of upstream continues.
		prop: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader))),
		tp:   tp,
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
	return t.prop.Extract(ctx, propagation.HeaderCarrier(h))
}

// Inject writes the current span's context into an outgoing request, so
// the upstream's server span hangs under the sidecar's. The B3 fields it
// does not write go first: a caller's single b3 header (which B3
// libraries read before the others), its parent and debug flag would
// otherwise name the caller's span beside the sidecar's.
func (t *Tracing) Inject(ctx context.Context, h http.Header) {
	for _, k := range staleB3 {
		delete(h, k)
	}
	t.prop.Inject(ctx, propagation.HeaderCarrier(h))
}

// staleB3 are the B3 fields the propagator's multiple-header injection
// leaves as they were, as http.Header holds them.
var staleB3 = [...]string{"B3", "X-B3-Parentspanid", "X-B3-Flags"}

// Start starts a CLIENT span.
func (t *Tracing) Start(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
}

// StartServer starts a SERVER span: a request into the pod, which the
// inbound listener received for the app (docs/interception.md, "Inbound").
func (t *Tracing) StartServer(ctx context.Context, name string) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer))
}

// Shutdown exports what is queued, within ctx.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

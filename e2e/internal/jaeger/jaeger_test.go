package jaeger

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// TestRoundTrip sends spans with the OpenTelemetry SDK over OTLP/gRPC, as
// the sidecar does, and reads them back through the query API. It also
// pins down how Jaeger v2 renders what the telemetry tests check: the
// resource as process tags, the parent as a CHILD_OF reference, an Error
// status as otel.status_code=ERROR plus error=true, typed attributes.
func TestRoundTrip(t *testing.T) {
	j := StartT(t)
	for _, u := range []string{j.OTLPAddr, j.QueryURL, j.HealthURL} {
		if !strings.Contains(u, "127.0.0.1:") {
			t.Errorf("address %s is not on loopback", u)
		}
	}

	ctx := context.Background()
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(j.OTLPAddr), otlptracegrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSyncer(exp),
		sdktrace.WithResource(resource.NewSchemaless(
			attribute.String("service.name", "harness-test"),
			attribute.String("k8s.pod.name", "pod-1"),
		)),
	)
	defer tp.Shutdown(ctx)
	tr := tp.Tracer("jaeger_test")

	if _, err := j.Trace("0123456789abcdef0123456789abcdef"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Trace(unknown) error = %v, want ErrNotFound", err)
	}

	pctx, parent := tr.Start(ctx, "parent")
	_, child := tr.Start(pctx, "GET", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("url.full", "http://x:8000/a"),
		attribute.Int("http.response.status_code", 503),
		attribute.Bool("flag", true),
	))
	child.SetStatus(codes.Error, "")
	child.End()
	parent.End()
	traceID := parent.SpanContext().TraceID().String()

	spans, err := j.WaitTraceFunc(traceID, 10*time.Second, func(s []Span) bool { return len(s) == 2 })
	if err != nil {
		t.Fatal(err)
	}
	var got Span
	for _, s := range spans {
		if s.OperationName == "GET" {
			got = s
		}
	}
	if got.SpanID != child.SpanContext().SpanID().String() || got.TraceID != traceID {
		t.Fatalf("span GET: ids %s/%s, want %s/%s (spans %+v)", got.TraceID, got.SpanID, traceID, child.SpanContext().SpanID(), spans)
	}
	if p := got.ParentID(); p != parent.SpanContext().SpanID().String() {
		t.Errorf("ParentID() = %q, want %s", p, parent.SpanContext().SpanID())
	}
	if got.Process.ServiceName != "harness-test" {
		t.Errorf("service name %q, want harness-test", got.Process.ServiceName)
	}
	if v, _ := got.Process.Tag("k8s.pod.name"); v != "pod-1" {
		t.Errorf("process tag k8s.pod.name = %q, want pod-1 (tags %+v)", v, got.Process.Tags)
	}
	for k, want := range map[string]string{
		"url.full":                  "http://x:8000/a",
		"http.response.status_code": "503",
		"flag":                      "true",
		"span.kind":                 "client",
		"otel.status_code":          "ERROR",
		"error":                     "true",
	} {
		if v, ok := got.Tag(k); v != want {
			t.Errorf("tag %s = %q (present %v), want %q; tags %+v", k, v, ok, want, got.Tags)
		}
	}
	if _, err := j.WaitTrace(traceID, time.Second); err != nil {
		t.Errorf("WaitTrace: %v", err)
	}
}

func TestStopAndKill(t *testing.T) {
	j := StartT(t)
	j.Kill()
	if err := j.Alive(); err == nil {
		t.Error("Alive() = nil after Kill")
	}
	if _, err := j.WaitTrace("0123456789abcdef0123456789abcdef", time.Second); err == nil {
		t.Error("WaitTrace after Kill: no error")
	}
	j.Stop() // after Kill: cleans up, does not hang
	if _, err := os.Stat(j.dir); !os.IsNotExist(err) {
		t.Errorf("config dir %s left behind: %v", j.dir, err)
	}
}

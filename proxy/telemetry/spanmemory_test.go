package telemetry

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/minimesh/minimesh/internal/promtext"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// stuckExporter is a collector that takes an export and never answers
// until released (or the export's deadline): the span queue fills.
type stuckExporter struct{ release chan struct{} }

func (e *stuckExporter) ExportSpans(ctx context.Context, _ []sdktrace.ReadOnlySpan) error {
	select {
	case <-e.release:
	case <-ctx.Done():
	}
	return ctx.Err()
}

func (e *stuckExporter) Shutdown(context.Context) error { return nil }

// heapAfterGC is the live heap, in bytes.
func heapAfterGC() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestSpanQueueMemoryIsBounded: while the collector does not answer,
// the queue holds 2,048 spans, and each held what its request chose: a
// 30 KB URL in url.full, a trace state read from a header of 30 KB (one
// member and commas, which W3C allows; its member held the whole header).
// Requests of 60 KB heads (the head's limit is 64 KiB) took the sidecar
// to 600 MB while its collector was down, under a container limit of
// 128 MiB. Now the attributes are cut (maxAttrLen) into strings of their
// own, the trace state is compacted, and the queue's text is bounded
// (maxQueuedText): the queue's memory stays a few MB whatever the
// requests hold; the spans past it are counted as dropped.
func TestSpanQueueMemoryIsBounded(t *testing.T) {
	m := New(0)
	exp := &stuckExporter{release: make(chan struct{})}
	tr := newTracing(TracingConfig{SampleRatio: 1, ServiceName: "t", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, exp, m)
	defer func() {
		close(exp.release)
		_ = tr.Shutdown(context.Background())
	}()

	const n = defaultQueueSize + exportBatch + 200
	before := heapAfterGC()
	for i := range n {
		h := http.Header{
			"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			"Tracestate":  {"a=b" + strings.Repeat(",", 30000)},
		}
		_, p := tr.Begin(context.Background(), h, "GET", trace.SpanKindClient)
		if p.Span == nil {
			t.Fatal("a sampled caller's request is not recorded")
		}
		if i == 0 {
			if ts := p.SC.TraceState().String(); ts != "a=b" {
				t.Fatalf("trace state %.20q, want a=b", ts)
			}
		}
		p.Span.SetAttributes(attribute.String("url.full", "http://geo:80/"+strings.Repeat("x", 30000)))
		p.Span.End()
	}
	grown := int64(heapAfterGC()) - int64(before)
	dropped := m.spansDropped.Value()
	t.Logf("%d spans ended, %v dropped, heap grew %.1f MB", n, dropped, float64(grown)/1e6)
	if grown > 24<<20 {
		t.Errorf("the span queue holds %.1f MB for %d spans of 60 KB requests, want at most 24 MB", float64(grown)/1e6, n)
	}
	if dropped < 200 {
		t.Errorf("%v spans dropped, want at least the 200 past the queue's length", dropped)
	}
}

// TestLongAttributesAreCut: a span's string attributes and name longer
// than maxAttrLen are exported cut (at a character's start), its other
// fields as they were; a batch of 128 such spans is a request well under
// the 4 MiB a collector takes (it was 7.7 MB with 60 KB URLs, refused
// whole with RESOURCE_EXHAUSTED, the spans with short URLs in it too).
func TestLongAttributesAreCut(t *testing.T) {
	rec := &recordingExporter{}
	p := newQueueProcessor(rec, 0, &promtext.Counter{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(p))
	long := "/" + strings.Repeat("é", 40000) // 2 bytes each: a cut may not split one
	for range exportBatch {
		_, s := tp.Tracer("t").Start(context.Background(), "pkg.Service/"+long, trace.WithSpanKind(trace.SpanKindClient))
		s.SetAttributes(attribute.String("url.full", "http://geo:80"+long), attribute.Int("server.port", 80),
			attribute.StringSlice("list", []string{long, "short"}), attribute.String("minimesh.request_id", "abc"))
		s.AddEvent("e", trace.WithAttributes(attribute.String("x", long)))
		s.End()
	}
	if err := tp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := rec.all()
	if len(spans) != exportBatch {
		t.Fatalf("%d spans exported, want %d", len(spans), exportBatch)
	}
	s := spans[0]
	check := func(what, v string) {
		t.Helper()
		if len(v) > maxAttrLen || len(v) < maxAttrLen-4 || !utf8.ValidString(v) {
			t.Errorf("%s: %d bytes (valid UTF-8 %v), want a cut of at most %d", what, len(v), utf8.ValidString(v), maxAttrLen)
		}
	}
	check("name", s.Name())
	got := map[string]attribute.Value{}
	for _, kv := range s.Attributes() {
		got[string(kv.Key)] = kv.Value
	}
	check("url.full", got["url.full"].AsString())
	check("list[0]", got["list"].AsStringSlice()[0])
	check("event attribute", s.Events()[0].Attributes[0].Value.AsString())
	if got["server.port"].AsInt64() != 80 || got["minimesh.request_id"].AsString() != "abc" || got["list"].AsStringSlice()[1] != "short" {
		t.Errorf("attributes not kept as they were: %v", got)
	}
	if !s.SpanContext().IsValid() || s.SpanKind() != trace.SpanKindClient || s.EndTime().IsZero() || s.Resource() == nil {
		t.Errorf("a cut span lost its context, kind, times or resource: %+v", s)
	}
	if size := len(appendExportRequest(nil, spans)); size > 2<<20 {
		t.Errorf("an export of %d spans of long URLs is %d bytes", len(spans), size)
	}
}

// recordingExporter keeps what it is given.
type recordingExporter struct {
	countingExporter
	spans []sdktrace.ReadOnlySpan
}

func (e *recordingExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.spans = append(e.spans, spans...)
	return nil
}

func (e *recordingExporter) all() []sdktrace.ReadOnlySpan {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]sdktrace.ReadOnlySpan(nil), e.spans...)
}

// TestTraceStateIsCompacted: a trace state read from a header padded with
// empty members and spaces is sent upstream and kept as its members alone.
func TestTraceStateIsCompacted(t *testing.T) {
	tr := tracingAt(t, 1)
	for _, ts := range []string{"a=b" + strings.Repeat(",", 1000), " a=b ,, c=d", "a=b,c=d"} {
		h := http.Header{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, "Tracestate": {ts}}
		ctx, p := tr.Begin(context.Background(), h, "GET", trace.SpanKindClient)
		want := "a=b"
		if strings.Contains(ts, "c=d") {
			want = "a=b,c=d"
		}
		if got := p.SC.TraceState().String(); got != want {
			t.Errorf("%.12q: trace state %q, want %q", ts, got, want)
		}
		if !p.Span.(sdktrace.ReadOnlySpan).Parent().IsRemote() {
			t.Errorf("%.12q: the span's parent is not the caller's (remote)", ts)
		}
		out := http.Header{}
		tr.Inject(ctx, p, out)
		if got := out.Get("Tracestate"); got != want {
			t.Errorf("%.12q: sent upstream as %q, want %q", ts, got, want)
		}
	}
}

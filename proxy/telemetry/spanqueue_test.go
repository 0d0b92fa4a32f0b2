package telemetry

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/minimesh/minimesh/internal/promtext"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// countingExporter keeps the sizes of the batches it is given.
type countingExporter struct {
	mu      sync.Mutex
	batches []int
}

func (e *countingExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.batches = append(e.batches, len(spans))
	return nil
}

func (e *countingExporter) Shutdown(context.Context) error { return nil }

func (e *countingExporter) spans() (n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, b := range e.batches {
		n += b
	}
	return n
}

// TestSpanQueueExportsWithinInterval holds the span queue to its schedule
// in fake time: a span is exported exportInterval after it went into an
// empty batch (a later one does not put it off), a full batch at once,
// and an idle queue's timer never fires (the ticker it had fired every
// second).
func TestSpanQueueExportsWithinInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exp := &countingExporter{}
		p := newQueueProcessor(exp, 0, &promtext.Counter{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		defer p.Shutdown(context.Background())
		span := tracetest.SpanStub{SpanContext: trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled})}.Snapshot()
		idle := func() { t.Helper(); quietFor(t, time.Hour, &p.wakes, "timer firings with no span waiting") }
		idle()

		p.OnEnd(span)
		time.Sleep(exportInterval / 2)
		p.OnEnd(span)
		time.Sleep(exportInterval/2 - time.Millisecond)
		synctest.Wait()
		if n := exp.spans(); n != 0 {
			t.Fatalf("%d spans exported before exportInterval", n)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if n := exp.spans(); n != 2 {
			t.Fatalf("%d spans exported exportInterval after the first, want 2", n)
		}
		idle()

		// The timer starts again for the next span.
		p.OnEnd(span)
		time.Sleep(exportInterval)
		synctest.Wait()
		if n := exp.spans(); n != 3 {
			t.Fatalf("%d spans exported exportInterval after a span following a timed export, want 3", n)
		}
		idle()

		for range exportBatch {
			p.OnEnd(span)
		}
		synctest.Wait()
		if n := exp.spans(); n != 3+exportBatch {
			t.Fatalf("%d spans exported once a batch was full, want %d without time passing", n-3, exportBatch)
		}
		idle()
	})
}

package telemetry

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/internal/promtext"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// queueProcessor batches ended spans for export like the SDK's batch
// processor, but counts every span it drops (queue full, export failed):
// the SDK's processor keeps that count to itself, and an operator needs it
// to see that a collector outage is losing traces.
type queueProcessor struct {
	exp     sdktrace.SpanExporter
	queue   chan sdktrace.ReadOnlySpan
	flush   chan chan struct{}
	dropped *promtext.Counter
	log     *slog.Logger

	batch    int
	interval time.Duration
	wakes    atomic.Int64 // the interval's timer firing: for tests

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

const (
	defaultQueueSize = 2048
	// exportBatch is 128, not the SDK's 512: the spans waiting for
	// export are live heap that every collection marks, and at a sample
	// ratio of 1 a batch of 512 cost a request 106,000-122,000
	// instructions against 98,000 (cachegrind, two counts each; 32 and 64
	// did worse, exports then cost more than they save). A collector
	// takes the batches four times as often: at 1,000 requests/s with
	// retries, 16 a second (docs/benchmarks.md, "Tracing at 0.01").
	exportBatch    = 128
	exportInterval = time.Second
)

func newQueueProcessor(exp sdktrace.SpanExporter, size int, dropped *promtext.Counter, log *slog.Logger) *queueProcessor {
	if size <= 0 {
		size = defaultQueueSize
	}
	p := &queueProcessor{
		exp:      exp,
		queue:    make(chan sdktrace.ReadOnlySpan, size),
		flush:    make(chan chan struct{}),
		dropped:  dropped,
		log:      log,
		batch:    exportBatch,
		interval: exportInterval,
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go p.run()
	return p
}

func (p *queueProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd never blocks: a full queue drops the span.
func (p *queueProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	select {
	case p.queue <- s:
	default:
		p.dropped.Inc()
	}
}

// run exports a batch when it is full, and interval after its first span;
// with no span waiting it waits on no timer (dueTimer).
func (p *queueProcessor) run() {
	defer close(p.done)
	t := newDueTimer(p.interval)
	defer t.disarm()
	buf := make([]sdktrace.ReadOnlySpan, 0, p.batch)
	var failing bool
	export := func() {
		t.disarm()
		if len(buf) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := p.exp.ExportSpans(ctx, buf)
		cancel()
		switch {
		case err != nil:
			p.dropped.Add(float64(len(buf)))
			if !failing {
				p.log.Warn("span export failing; dropping spans until the collector answers", "error", err)
			}
			failing = true
		case failing:
			p.log.Info("span export working again")
			failing = false
		}
		clear(buf)
		buf = buf[:0]
	}
	for {
		select {
		case s := <-p.queue:
			buf = append(buf, s)
			if len(buf) >= p.batch {
				export()
			} else {
				t.arm()
			}
		case <-t.due():
			p.wakes.Add(1)
			export()
		case ack := <-p.flush:
			p.drain(&buf, export)
			close(ack)
		case <-p.stop:
			p.drain(&buf, export)
			return
		}
	}
}

// drain exports everything queued now.
func (p *queueProcessor) drain(buf *[]sdktrace.ReadOnlySpan, export func()) {
	for {
		select {
		case s := <-p.queue:
			*buf = append(*buf, s)
			if len(*buf) >= p.batch {
				export()
			}
		default:
			export()
			return
		}
	}
}

func (p *queueProcessor) ForceFlush(ctx context.Context) error {
	ack := make(chan struct{})
	select {
	case p.flush <- ack:
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ack:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *queueProcessor) Shutdown(ctx context.Context) error {
	p.stopOnce.Do(func() { close(p.stop) })
	select {
	case <-p.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return p.exp.Shutdown(ctx)
}

package telemetry

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/internal/promtext"
	"github.com/minimesh/minimesh/internal/textcut"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// queueProcessor batches ended spans for export like the SDK's batch
// processor, but counts every span it drops (queue full, export failed):
// the SDK's processor keeps that count to itself, and an operator needs it
// to see that a collector outage is losing traces.
type queueProcessor struct {
	exp   sdktrace.SpanExporter
	queue chan queuedSpan
	// queued is the text the spans in queue hold (spanText), at most
	// maxQueuedText: with the queue's length, it bounds the queue's memory
	// whatever the requests hold.
	queued  atomic.Int64
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

	// maxAttrLen bounds a queued span's name and each of its string
	// attributes, in bytes (cut at a character's start). Their values
	// come from the requests (url.full, server.address, url.path,
	// user_agent.original, a gRPC method), as long as a request's head
	// (64 KiB): 2,048 queued spans of 60 KB URLs held 400 MB while the
	// collector was down, and a batch of them was larger than the 4 MiB
	// a collector takes in one message (gRPC's default). 2,048 bytes is
	// more than any URL a browser sends (2,000 characters is the usual
	// advice).
	maxAttrLen = 2048
	// maxQueuedText bounds the text (spanText) of the spans waiting for
	// export: a span of the sidecar's holds about 300 bytes of it, 600 KB
	// for a full queue; spans of long URLs or large trace states are
	// dropped and counted past it rather than held.
	maxQueuedText = 4 << 20
	// maxBatchText sends a batch once it holds this much text, before it
	// has exportBatch spans: an export request stays well under 4 MiB.
	maxBatchText = 1 << 20
)

// A queuedSpan is an ended span waiting for export and its spanText.
type queuedSpan struct {
	s    sdktrace.ReadOnlySpan
	text int64
}

func newQueueProcessor(exp sdktrace.SpanExporter, size int, dropped *promtext.Counter, log *slog.Logger) *queueProcessor {
	if size <= 0 {
		size = defaultQueueSize
	}
	p := &queueProcessor{
		exp:      exp,
		queue:    make(chan queuedSpan, size),
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

// OnEnd never blocks: a full queue drops the span, and so does one whose
// text would take the queue's past maxQueuedText. A span with a longer
// name or string attribute than maxAttrLen is queued as a copy with them
// cut (trim): the SDK's own limit would cut them as substrings, which hold
// the whole of the original in memory.
func (p *queueProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	n, long := spanText(s)
	if long {
		s = trim(s)
		n, _ = spanText(s)
	}
	if p.queued.Add(n) > maxQueuedText {
		p.queued.Add(-n)
		p.dropped.Inc()
		return
	}
	select {
	case p.queue <- queuedSpan{s, n}:
	default:
		p.queued.Add(-n)
		p.dropped.Inc()
	}
}

// spanText is the length of the text a span holds that the requests
// choose: its name, its string attributes (its events' too) and its trace
// state; long reports a name or attribute longer than maxAttrLen.
func spanText(s sdktrace.ReadOnlySpan) (n int64, long bool) {
	add := func(l int) {
		n += int64(l)
		long = long || l > maxAttrLen
	}
	add(len(s.Name()))
	attrs := func(kvs []attribute.KeyValue) {
		for _, kv := range kvs {
			n += int64(len(kv.Key))
			switch kv.Value.Type() {
			case attribute.STRING:
				add(len(kv.Value.AsString()))
			case attribute.STRINGSLICE:
				for _, v := range kv.Value.AsStringSlice() {
					add(len(v))
				}
			}
		}
	}
	attrs(s.Attributes())
	for _, ev := range s.Events() {
		add(len(ev.Name))
		attrs(ev.Attributes)
	}
	s.SpanContext().TraceState().Walk(func(k, v string) bool {
		n += int64(len(k) + len(v) + 2)
		return true
	})
	return n, long
}

// trim returns a copy of s whose name and string attributes are cut to
// maxAttrLen bytes, as new strings (the cut ones share nothing with s's).
func trim(s sdktrace.ReadOnlySpan) sdktrace.ReadOnlySpan {
	st := tracetest.SpanStubFromReadOnlySpan(s)
	st.Name = cut(st.Name)
	attrs := func(kvs []attribute.KeyValue) []attribute.KeyValue {
		out := make([]attribute.KeyValue, len(kvs))
		for i, kv := range kvs {
			switch kv.Value.Type() {
			case attribute.STRING:
				kv.Value = attribute.StringValue(cut(kv.Value.AsString()))
			case attribute.STRINGSLICE:
				vs := kv.Value.AsStringSlice()
				for j := range vs {
					vs[j] = cut(vs[j])
				}
				kv.Value = attribute.StringSliceValue(vs)
			}
			out[i] = kv
		}
		return out
	}
	st.Attributes = attrs(st.Attributes)
	if len(st.Events) > 0 {
		evs := make([]sdktrace.Event, len(st.Events))
		for i, ev := range st.Events {
			ev.Name = cut(ev.Name)
			ev.Attributes = attrs(ev.Attributes)
			evs[i] = ev
		}
		st.Events = evs
	}
	return st.Snapshot()
}

// cut returns s, or a copy of its first maxAttrLen bytes at most, ending
// where a character starts.
func cut(s string) string {
	if len(s) <= maxAttrLen {
		return s
	}
	return strings.Clone(textcut.Prefix(s, maxAttrLen))
}

// run exports a batch when it is full, and interval after its first span;
// with no span waiting it waits on no timer (dueTimer).
func (p *queueProcessor) run() {
	defer close(p.done)
	t := newDueTimer(p.interval)
	defer t.disarm()
	buf := make([]sdktrace.ReadOnlySpan, 0, p.batch)
	var text int64 // buf's spans' text, still counted in p.queued
	var failing bool
	export := func() {
		t.disarm()
		if len(buf) == 0 {
			return
		}
		defer func() {
			p.queued.Add(-text)
			text = 0
		}()
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
		case q := <-p.queue:
			buf, text = append(buf, q.s), text+q.text
			if len(buf) >= p.batch || text >= maxBatchText {
				export()
			} else {
				t.arm()
			}
		case <-t.due():
			p.wakes.Add(1)
			export()
		case ack := <-p.flush:
			p.drain(&buf, &text, export)
			close(ack)
		case <-p.stop:
			p.drain(&buf, &text, export)
			return
		}
	}
}

// drain exports everything queued now.
func (p *queueProcessor) drain(buf *[]sdktrace.ReadOnlySpan, text *int64, export func()) {
	for {
		select {
		case q := <-p.queue:
			*buf, *text = append(*buf, q.s), *text+q.text
			if len(*buf) >= p.batch || *text >= maxBatchText {
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

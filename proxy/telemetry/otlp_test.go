package telemetry

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/blackhole"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

// testSpans are two spans of one resource and scope, with every kind of
// attribute value, an event, a link, an error status and a remote parent.
func testSpans(t *testing.T) []sdktrace.ReadOnlySpan {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "web"), attribute.Int("n", 0))))
	tr := tp.Tracer("github.com/minimesh/minimesh/proxy", trace.WithInstrumentationVersion("v1"))
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	psid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ts, _ := trace.ParseTraceState("a=b")
	parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: psid, TraceFlags: trace.FlagsSampled, TraceState: ts, Remote: true})
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), parent)
	_, s := tr.Start(ctx, "GET geo", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithLinks(trace.Link{SpanContext: parent, Attributes: []attribute.KeyValue{attribute.Bool("l", true)}}),
		trace.WithAttributes(
			attribute.String("s", "x"), attribute.String("empty", ""), attribute.Bool("f", false), attribute.Int64("i", -3), attribute.Int("zero", 0),
			attribute.Float64("d", 1.5), attribute.StringSlice("ss", []string{"a", ""}), attribute.BoolSlice("bs", []bool{true, false}),
			attribute.Int64Slice("is", []int64{1, -1}), attribute.Float64Slice("ds", []float64{0, 2.5})))
	s.AddEvent("retry", trace.WithAttributes(attribute.Int("attempt", 2)), trace.WithTimestamp(time.Unix(1, 5)))
	s.SetStatus(codes.Error, "503")
	s.End()
	_, s2 := tr.Start(context.Background(), "inbound", trace.WithSpanKind(trace.SpanKindServer))
	s2.SetStatus(codes.Ok, "")
	s2.End()
	return rec.Ended()
}

// want is the request the OTel exporter (tracetransform) builds of spans,
// written out with the generated types.
func want(spans []sdktrace.ReadOnlySpan) *collectortrace.ExportTraceServiceRequest {
	kv := func(kvs []attribute.KeyValue) []*commonpb.KeyValue {
		var out []*commonpb.KeyValue
		for _, a := range kvs {
			out = append(out, &commonpb.KeyValue{Key: string(a.Key), Value: anyValue(a.Value)})
		}
		return out
	}
	var ps []*tracepb.Span
	for _, s := range spans {
		sc := s.SpanContext()
		tid, sid := sc.TraceID(), sc.SpanID()
		p := &tracepb.Span{TraceId: tid[:], SpanId: sid[:], TraceState: sc.TraceState().String(), Name: s.Name(),
			Kind: tracepb.Span_SpanKind(s.SpanKind()), StartTimeUnixNano: uint64(s.StartTime().UnixNano()), EndTimeUnixNano: uint64(s.EndTime().UnixNano()),
			Attributes: kv(s.Attributes()), Flags: spanFlags(sc.TraceFlags(), s.Parent()), Status: &tracepb.Status{}}
		if s.Parent().SpanID().IsValid() {
			psid := s.Parent().SpanID()
			p.ParentSpanId = psid[:]
		}
		switch s.Status().Code {
		case codes.Error:
			p.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: s.Status().Description}
		case codes.Ok:
			p.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_OK}
		}
		for _, e := range s.Events() {
			p.Events = append(p.Events, &tracepb.Span_Event{TimeUnixNano: uint64(e.Time.UnixNano()), Name: e.Name, Attributes: kv(e.Attributes)})
		}
		for _, l := range s.Links() {
			ltid, lsid := l.SpanContext.TraceID(), l.SpanContext.SpanID()
			p.Links = append(p.Links, &tracepb.Span_Link{TraceId: ltid[:], SpanId: lsid[:], Attributes: kv(l.Attributes),
				Flags: spanFlags(l.SpanContext.TraceFlags(), l.SpanContext)})
		}
		ps = append(ps, p)
	}
	sc := spans[0].InstrumentationScope()
	return &collectortrace.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource:   &resourcepb.Resource{Attributes: kv(spans[0].Resource().Attributes())},
		ScopeSpans: []*tracepb.ScopeSpans{{Scope: &commonpb.InstrumentationScope{Name: sc.Name, Version: sc.Version}, Spans: ps}},
	}}}
}

func anyValue(v attribute.Value) *commonpb.AnyValue {
	arr := func(vs ...*commonpb.AnyValue) *commonpb.AnyValue {
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: vs}}}
	}
	switch v.Type() {
	case attribute.BOOL:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: v.AsBool()}}
	case attribute.INT64:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v.AsInt64()}}
	case attribute.FLOAT64:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: v.AsFloat64()}}
	case attribute.STRING:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v.AsString()}}
	case attribute.STRINGSLICE:
		var vs []*commonpb.AnyValue
		for _, x := range v.AsStringSlice() {
			vs = append(vs, anyValue(attribute.StringValue(x)))
		}
		return arr(vs...)
	case attribute.BOOLSLICE:
		var vs []*commonpb.AnyValue
		for _, x := range v.AsBoolSlice() {
			vs = append(vs, anyValue(attribute.BoolValue(x)))
		}
		return arr(vs...)
	case attribute.INT64SLICE:
		var vs []*commonpb.AnyValue
		for _, x := range v.AsInt64Slice() {
			vs = append(vs, anyValue(attribute.Int64Value(x)))
		}
		return arr(vs...)
	case attribute.FLOAT64SLICE:
		var vs []*commonpb.AnyValue
		for _, x := range v.AsFloat64Slice() {
			vs = append(vs, anyValue(attribute.Float64Value(x)))
		}
		return arr(vs...)
	}
	panic("not in the test")
}

// TestOTLPEncoding: the request decodes, with the generated OTLP types,
// to what the OTel exporter would have sent.
func TestOTLPEncoding(t *testing.T) {
	spans := testSpans(t)
	var got collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(appendExportRequest(nil, spans), &got); err != nil {
		t.Fatal(err)
	}
	if w := want(spans); !proto.Equal(w, &got) {
		t.Fatalf("got\n%v\nwant\n%v", prototext.Format(&got), prototext.Format(w))
	}
	// A batch whose ScopeSpans takes a three-byte length (over 16 KiB),
	// appended after bytes already in the buffer, which stay.
	many := slices.Repeat(spans, 200)
	b := appendExportRequest([]byte("kept"), many)
	var gotMany collectortrace.ExportTraceServiceRequest
	if string(b[:4]) != "kept" || len(b) < 20<<10 {
		t.Fatalf("%d bytes, starting %q", len(b), b[:4])
	}
	if err := proto.Unmarshal(b[4:], &gotMany); err != nil {
		t.Fatal(err)
	}
	if w := want(many); !proto.Equal(w, &gotMany) {
		t.Fatalf("%d spans: not the request the generated types make", len(many))
	}
	if got.ResourceSpans[0].ScopeSpans[0].Spans[0].Flags != 0x301 {
		t.Fatalf("flags %#x: want sampled, with a remote parent", got.ResourceSpans[0].ScopeSpans[0].Spans[0].Flags)
	}
}

// collector is a grpc-go OTLP collector that fails its first calls.
type collector struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	fail  int
	calls int
	got   []*tracepb.Span
}

func (c *collector) Export(_ context.Context, r *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.calls <= c.fail {
		return nil, status.Error(grpccodes.Unavailable, "not yet")
	}
	for _, rs := range r.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			c.got = append(c.got, ss.Spans...)
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// TestOTLPExport: spans reach a grpc-go collector; Unavailable is retried;
// a refusal that is not retryable is an error with its code and message.
func TestOTLPExport(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{fail: 2}
	g := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(g, c)
	go g.Serve(ln)
	defer g.Stop()
	e := newOTLPExporter(ln.Addr().String())
	e.retryFirst = 10 * time.Millisecond
	defer e.Shutdown(context.Background())
	spans := testSpans(t)
	if err := e.ExportSpans(context.Background(), spans); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	calls, n := c.calls, len(c.got)
	c.mu.Unlock()
	if calls != 3 || n != 2 {
		t.Fatalf("%d calls, %d spans; want 3 calls (2 refused), 2 spans", calls, n)
	}

	g2 := grpc.NewServer() // no TraceService: Unimplemented, not retried
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	go g2.Serve(ln2)
	defer g2.Stop()
	e2 := newOTLPExporter(ln2.Addr().String())
	defer e2.Shutdown(context.Background())
	err = e2.ExportSpans(context.Background(), spans)
	var ge interface{ Error() string }
	if err == nil || !errors.As(err, &ge) || !strings.Contains(err.Error(), "Unimplemented") {
		t.Fatalf("err %v; want Unimplemented", err)
	}

	// Nothing listening: an error within the timeout, not a hang.
	e3 := newOTLPExporter("127.0.0.1:1")
	e3.timeout = 2 * time.Second
	start := time.Now()
	if err := e3.ExportSpans(context.Background(), spans); err == nil || time.Since(start) > 4*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
}

// TestOTLPExportAfterSilence: an export that timed out on a connection
// whose collector went silent (no reset) does not leave the next exports
// on that connection: they reach the collector again over a new one.
func TestOTLPExportAfterSilence(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{}
	g := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(g, c)
	go g.Serve(ln)
	t.Cleanup(g.Stop) // after the proxy's connections are closed
	p := blackhole.New(t, ln.Addr().String())
	e := newOTLPExporter(p.Addr())
	e.timeout, e.retryFor = 300*time.Millisecond, 0
	defer e.Shutdown(context.Background())
	spans := testSpans(t)
	if err := e.ExportSpans(context.Background(), spans); err != nil {
		t.Fatal(err)
	}
	p.Hole()
	if err := e.ExportSpans(context.Background(), spans); err == nil {
		t.Fatal("an export over a silent connection succeeded")
	}
	var last error
	for range 3 {
		if last = e.ExportSpans(context.Background(), spans); last == nil {
			return
		}
	}
	t.Fatalf("exports after the silence: %v, want them over a new connection", last)
}

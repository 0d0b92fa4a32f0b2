package telemetry

import (
	"context"
	"errors"
	"math"
	"net"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/minimesh/minimesh/internal/grpcwire"
	"github.com/minimesh/minimesh/internal/protoenc"
)

// otlpExporter sends spans to an OTLP/gRPC collector
// (opentelemetry.proto.collector.trace.v1.TraceService/Export), encoding
// ExportTraceServiceRequest field by field as the OTel exporter's
// tracetransform does, over internal/grpcwire. It replaces otlptracegrpc,
// which links google.golang.org/grpc and OTLP's generated types: about
// 5 MB of the sidecar's binary and, with the xDS client's share of grpc,
// 4 MB of its idle RSS (docs/benchmarks.md, "Memory at idle and under
// load"). The wire is the same (proto/otlp v1.x, tested against the
// generated types and a grpc-go collector).
type otlpExporter struct {
	addr    string
	client  *http.Client
	timeout time.Duration
	// retries: 200 ms doubling to 1 s, for at most 3 s, on the codes
	// otlptracegrpc retries (Canceled, DeadlineExceeded, Aborted,
	// OutOfRange, Unavailable, DataLoss); the whole export within
	// timeout.
	retryFirst, retryMax, retryFor time.Duration

	mu  sync.Mutex
	buf []byte // the last export's request, its room kept for the next

	connMu sync.Mutex
	conn   net.Conn // the last connection dialled (one address, one at a time)
}

// maxKeptExport bounds the room an exporter keeps between exports: a
// batch of 128 of the sidecar's spans (exportBatch) encodes to about
// 50 KB; a batch of spans with large attributes may take more.
const maxKeptExport = 1 << 20

const otlpExport = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

func newOTLPExporter(addr string) *otlpExporter {
	e := &otlpExporter{addr: addr, client: grpcwire.NewClient(5 * time.Second), timeout: 5 * time.Second,
		retryFirst: 200 * time.Millisecond, retryMax: time.Second, retryFor: 3 * time.Second}
	t := e.client.Transport.(*http.Transport)
	dial := t.DialContext
	t.DialContext = func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := dial(ctx, network, address)
		if err == nil {
			e.connMu.Lock()
			e.conn = c
			e.connMu.Unlock()
		}
		return c, err
	}
	return e
}

// dropConn closes the exporter's connection, whatever it carries.
func (e *otlpExporter) dropConn() {
	e.connMu.Lock()
	defer e.connMu.Unlock()
	if e.conn != nil {
		e.conn.Close()
		e.conn = nil
	}
}

func retryable(err error) bool {
	var e *grpcwire.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case 1, 4, 10, 11, 14, 15:
		return true
	}
	return false
}

// ExportSpans sends spans in one request.
func (e *otlpExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if len(spans) == 0 {
		return nil
	}
	// One export at a time: the processor's goroutine calls, and the
	// request is copied into its gRPC frame (grpcwire.Invoke) before the
	// next can use the room.
	e.mu.Lock()
	defer e.mu.Unlock()
	req := appendExportRequest(e.buf[:0], spans)
	if cap(req) <= maxKeptExport {
		e.buf = req
	}
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	start, wait := time.Now(), e.retryFirst
	for {
		_, err := grpcwire.Invoke(ctx, e.client, e.addr, otlpExport, req)
		if err != nil && ctx.Err() != nil {
			// No answer in time: the collector may be gone without a
			// reset (its node lost), and its connection would carry every
			// export into the same silence until TCP gives up, minutes
			// later (net/http keeps using an HTTP/2 connection whose
			// calls were cancelled). It is closed: the next export dials
			// anew.
			e.dropConn()
		}
		if err == nil || !retryable(err) || time.Since(start)+wait > e.retryFor {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, e.retryMax)
	}
}

// Shutdown closes the exporter's connection.
func (e *otlpExporter) Shutdown(context.Context) error {
	e.client.CloseIdleConnections()
	return nil
}

// appendExportRequest appends ExportTraceServiceRequest{resource_spans =
// 1} of spans: one ResourceSpans per resource, one ScopeSpans per
// instrumentation scope in it, in the order they first appear.
func appendExportRequest(b []byte, spans []sdktrace.ReadOnlySpan) []byte {
	type scopeGroup struct {
		s     sdktrace.ReadOnlySpan // the first of the group: its scope
		spans []sdktrace.ReadOnlySpan
	}
	type resourceGroup struct {
		s      sdktrace.ReadOnlySpan
		scopes []*scopeGroup
	}
	var groups []*resourceGroup
	byRes := map[attribute.Distinct]*resourceGroup{}
	for _, s := range spans {
		if s == nil {
			continue
		}
		rk := s.Resource().Equivalent()
		rg := byRes[rk]
		if rg == nil {
			rg = &resourceGroup{s: s}
			byRes[rk] = rg
			groups = append(groups, rg)
		}
		var sg *scopeGroup
		for _, g := range rg.scopes {
			if g.s.InstrumentationScope() == s.InstrumentationScope() {
				sg = g
				break
			}
		}
		if sg == nil {
			sg = &scopeGroup{s: s}
			rg.scopes = append(rg.scopes, sg)
		}
		sg.spans = append(sg.spans, s)
	}
	for _, rg := range groups {
		var rs, r int
		b, rs = protoenc.Open(b, 1) // ResourceSpans
		// Resource{attributes = 1}
		res := rg.s.Resource()
		b, r = protoenc.Open(b, 1)
		for it := res.Iter(); it.Next(); {
			b = appendKeyValue(b, 1, it.Attribute())
		}
		b = protoenc.Close(b, r)
		for _, sg := range rg.scopes {
			var ss int
			b, ss = protoenc.Open(b, 2) // ScopeSpans
			sc := sg.s.InstrumentationScope()
			if sc.Name != "" || sc.Version != "" || sc.SchemaURL != "" || sc.Attributes.Len() > 0 {
				var is int
				b, is = protoenc.Open(b, 1)
				b = protoenc.String(b, 1, sc.Name)
				b = protoenc.String(b, 2, sc.Version)
				for it := sc.Attributes.Iter(); it.Next(); {
					b = appendKeyValue(b, 3, it.Attribute())
				}
				b = protoenc.Close(b, is)
			}
			for _, s := range sg.spans {
				var sp int
				b, sp = protoenc.Open(b, 2)
				b = appendSpan(b, s)
				b = protoenc.Close(b, sp)
			}
			b = protoenc.String(b, 3, sc.SchemaURL)
			b = protoenc.Close(b, ss)
		}
		b = protoenc.String(b, 3, res.SchemaURL())
		b = protoenc.Close(b, rs)
	}
	return b
}

func clampCount(v int) uint64 {
	return uint64(min(max(v, 0), math.MaxUint32))
}

func unixNano(t time.Time) uint64 { return uint64(max(0, t.UnixNano())) }

// Span flags (opentelemetry.proto.trace.v1.SpanFlags).
const (
	flagHasIsRemote = 0x100
	flagIsRemote    = 0x200
)

func spanFlags(tf trace.TraceFlags, parent trace.SpanContext) uint32 {
	f := uint32(tf) | flagHasIsRemote
	if parent.IsRemote() {
		f |= flagIsRemote
	}
	return f
}

// appendSpan appends opentelemetry.proto.trace.v1.Span.
func appendSpan(b []byte, s sdktrace.ReadOnlySpan) []byte {
	sc := s.SpanContext()
	tid, sid := sc.TraceID(), sc.SpanID()
	b = protoenc.Message(b, 1, tid[:])
	b = protoenc.Message(b, 2, sid[:])
	b = protoenc.String(b, 3, sc.TraceState().String())
	parent := s.Parent()
	if psid := parent.SpanID(); psid.IsValid() {
		b = protoenc.Message(b, 4, psid[:])
	}
	b = protoenc.String(b, 5, s.Name())
	b = protoenc.Uint(b, 6, uint64(spanKind(s.SpanKind())))
	b = protoenc.Fixed64(b, 7, unixNano(s.StartTime()))
	b = protoenc.Fixed64(b, 8, unixNano(s.EndTime()))
	for _, kv := range s.Attributes() {
		b = appendKeyValue(b, 9, kv)
	}
	b = protoenc.Uint(b, 10, clampCount(s.DroppedAttributes()))
	for _, ev := range s.Events() {
		var e int
		b, e = protoenc.Open(b, 11)
		b = protoenc.Fixed64(b, 1, unixNano(ev.Time))
		b = protoenc.String(b, 2, ev.Name)
		for _, kv := range ev.Attributes {
			b = appendKeyValue(b, 3, kv)
		}
		b = protoenc.Uint(b, 4, clampCount(ev.DroppedAttributeCount))
		b = protoenc.Close(b, e)
	}
	b = protoenc.Uint(b, 12, clampCount(s.DroppedEvents()))
	for _, l := range s.Links() {
		var e int
		b, e = protoenc.Open(b, 13)
		ltid, lsid := l.SpanContext.TraceID(), l.SpanContext.SpanID()
		b = protoenc.Message(b, 1, ltid[:])
		b = protoenc.Message(b, 2, lsid[:])
		for _, kv := range l.Attributes {
			b = appendKeyValue(b, 4, kv)
		}
		b = protoenc.Uint(b, 5, clampCount(l.DroppedAttributeCount))
		b = protoenc.Fixed32(b, 6, spanFlags(l.SpanContext.TraceFlags(), l.SpanContext))
		b = protoenc.Close(b, e)
	}
	b = protoenc.Uint(b, 14, clampCount(s.DroppedLinks()))
	// Status{message = 2, code = 3}: OTLP's codes are UNSET 0, OK 1,
	// ERROR 2 (OTel's Go codes are Unset 0, Error 1, Ok 2).
	st := s.Status()
	var code uint64
	switch st.Code {
	case codes.Ok:
		code = 1
	case codes.Error:
		code = 2
	}
	var sm int
	b, sm = protoenc.Open(b, 15)
	b = protoenc.String(b, 2, st.Description)
	b = protoenc.Uint(b, 3, code)
	b = protoenc.Close(b, sm)
	b = protoenc.Fixed32(b, 16, spanFlags(sc.TraceFlags(), parent))
	return b
}

// spanKind is OTLP's SpanKind: INTERNAL 1, SERVER 2, CLIENT 3, PRODUCER
// 4, CONSUMER 5, the same numbers as OTel's Go kinds.
func spanKind(k trace.SpanKind) int {
	switch k {
	case trace.SpanKindInternal, trace.SpanKindServer, trace.SpanKindClient, trace.SpanKindProducer, trace.SpanKindConsumer:
		return int(k)
	}
	return 0
}

// appendKeyValue appends field num, KeyValue{key = 1, value = 2}.
func appendKeyValue(b []byte, num protowire.Number, kv attribute.KeyValue) []byte {
	var m, v int
	b, m = protoenc.Open(b, num)
	b = protoenc.String(b, 1, string(kv.Key))
	b, v = protoenc.Open(b, 2)
	b = appendAnyValue(b, kv.Value)
	b = protoenc.Close(b, v)
	return protoenc.Close(b, m)
}

// appendAnyValue appends AnyValue{string_value = 1, bool_value = 2,
// int_value = 3, double_value = 4, array_value = 5 (ArrayValue{values =
// 1}), kvlist_value = 6 (KeyValueList{values = 1}), bytes_value = 7}.
// A oneof member is written even when it holds its zero value.
func appendAnyValue(b []byte, v attribute.Value) []byte {
	str := func(b []byte, s string) []byte {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		return protowire.AppendString(b, s)
	}
	boolean := func(b []byte, x bool) []byte {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		return protowire.AppendVarint(b, protowire.EncodeBool(x))
	}
	integer := func(b []byte, x int64) []byte {
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(x))
	}
	double := func(b []byte, x float64) []byte {
		b = protowire.AppendTag(b, 4, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, math.Float64bits(x))
	}
	array := func(b []byte, n int, each func(b []byte, i int) []byte) []byte {
		var a, e int
		b, a = protoenc.Open(b, 5)
		for i := range n {
			b, e = protoenc.Open(b, 1)
			b = each(b, i)
			b = protoenc.Close(b, e)
		}
		return protoenc.Close(b, a)
	}
	switch v.Type() {
	case attribute.BOOL:
		return boolean(b, v.AsBool())
	case attribute.INT64:
		return integer(b, v.AsInt64())
	case attribute.FLOAT64:
		return double(b, v.AsFloat64())
	case attribute.STRING:
		return str(b, v.AsString())
	case attribute.BOOLSLICE:
		xs := v.AsBoolSlice()
		return array(b, len(xs), func(b []byte, i int) []byte { return boolean(b, xs[i]) })
	case attribute.INT64SLICE:
		xs := v.AsInt64Slice()
		return array(b, len(xs), func(b []byte, i int) []byte { return integer(b, xs[i]) })
	case attribute.FLOAT64SLICE:
		xs := v.AsFloat64Slice()
		return array(b, len(xs), func(b []byte, i int) []byte { return double(b, xs[i]) })
	case attribute.STRINGSLICE:
		xs := v.AsStringSlice()
		return array(b, len(xs), func(b []byte, i int) []byte { return str(b, xs[i]) })
	case attribute.BYTESLICE:
		b = protowire.AppendTag(b, 7, protowire.BytesType)
		return protowire.AppendBytes(b, v.AsByteSlice())
	case attribute.SLICE:
		xs := v.AsSlice()
		return array(b, len(xs), func(b []byte, i int) []byte { return appendAnyValue(b, xs[i]) })
	case attribute.MAP:
		var l int
		b, l = protoenc.Open(b, 6)
		for _, kv := range v.AsMap() {
			b = appendKeyValue(b, 1, kv)
		}
		return protoenc.Close(b, l)
	case attribute.EMPTY:
		return b
	}
	return str(b, "INVALID")
}

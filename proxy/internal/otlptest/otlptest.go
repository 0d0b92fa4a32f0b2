// Package otlptest is an OTLP/gRPC trace collector for the proxy's tests
// of what the sidecar exports: a real gRPC server of the collector's
// service on loopback, keeping every span it is sent.
//
// It is imported only by tests.
package otlptest

import (
	"context"
	"encoding/hex"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// Collector keeps the spans it is sent, in the order they came.
type Collector struct {
	collectortrace.UnimplementedTraceServiceServer
	// Addr is its host:port, the sidecar's OTLP endpoint.
	Addr  string
	mu    sync.Mutex
	spans []*tracepb.Span
}

// Start serves a Collector on loopback until the test ends.
func Start(t *testing.T) *Collector {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &Collector{Addr: ln.Addr().String()}
	s := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(s, c)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return c
}

func (c *Collector) Export(_ context.Context, r *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range r.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			c.spans = append(c.spans, ss.Spans...)
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// Spans are the spans exported so far.
func (c *Collector) Spans() []*tracepb.Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.spans)
}

// Trace waits until the trace traceID (hex) holds n spans (an exporter
// sends them a second or so after they end) and returns them; more than
// n, or fewer after 20 s, fails the test.
func (c *Collector) Trace(t *testing.T, traceID string, n int) []*tracepb.Span {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var got []*tracepb.Span
		for _, s := range c.Spans() {
			if hex.EncodeToString(s.TraceId) == traceID {
				got = append(got, s)
			}
		}
		if len(got) >= n || time.Now().After(deadline) {
			if len(got) != n {
				t.Fatalf("trace %s: %d spans exported, want %d", traceID, len(got), n)
			}
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

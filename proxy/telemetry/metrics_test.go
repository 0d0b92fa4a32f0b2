package telemetry

import "testing"

// TestRequestPathAllocatesNothing: once a destination's series exist,
// counting a request, a gRPC call, a rejection and opaque bytes allocates
// nothing (internal/promtext's children are atomics).
func TestRequestPathAllocatesNothing(t *testing.T) {
	m := New(0)
	d := m.Destination("geo-service:8000")
	d.Observe("GET", 200, 0.003)
	tcp := d.TCP()
	if a := testing.AllocsPerRun(1000, func() {
		d.Observe("GET", 200, 0.003)
		d.GRPC(0)
		d.Rejected()
		tcp.Sent.Add(1500)
		tcp.Received.Add(42)
	}); a != 0 {
		t.Errorf("%v allocations per request", a)
	}
}

func BenchmarkObserve(b *testing.B) {
	d := New(0).Destination("geo-service:8000")
	d.Observe("GET", 200, 0.003)
	b.ReportAllocs()
	for b.Loop() {
		d.Observe("GET", 200, 0.003)
	}
}

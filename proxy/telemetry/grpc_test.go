package telemetry

import "testing"

func TestGRPCCounter(t *testing.T) {
	m := New(0)
	d := m.Destination("health-service:50051")
	for _, tc := range []struct {
		code int
		name string
		n    int
	}{
		{0, "OK", 3},
		{14, "UNAVAILABLE", 2},
		{4, "DEADLINE_EXCEEDED", 1},
		{99, "UNKNOWN", 1},
		{-1, "UNKNOWN", 1},
	} {
		for i := 0; i < tc.n; i++ {
			d.GRPC(tc.code)
		}
	}
	for name, want := range map[string]float64{"OK": 3, "UNAVAILABLE": 2, "DEADLINE_EXCEEDED": 1, "UNKNOWN": 2, "INTERNAL": 0} {
		if got := m.grpc.With(Outbound, "health-service:50051", name).Value(); got != want {
			t.Errorf("grpc_code=%s: %v, want %v", name, got, want)
		}
	}
	// Series exist only for the codes seen (INTERNAL was made by the
	// lookup above).
	if n := m.grpc.Len(); n != 5 {
		t.Errorf("%d series, want 5", n)
	}
	if a := testing.AllocsPerRun(100, func() { d.GRPC(0) }); a != 0 {
		t.Errorf("%v allocations per call", a)
	}
}

package policy

import (
	"slices"
	"testing"
)

// TestGRPCConditions: gRPC codes in retryOn and failOn, by name, beside
// classes and status codes.
func TestGRPCConditions(t *testing.T) {
	c := conds("5xx", "grpc-unavailable", "grpc-resource-exhausted", "429", "grpc-cancelled", "grpc-unauthenticated")
	for code, want := range map[int]bool{0: false, 1: true, 4: false, 8: true, 14: true, 16: true, 17: false, -1: false} {
		if got := c.GRPCStatus(code); got != want {
			t.Errorf("GRPCStatus(%d) = %v, want %v", code, got, want)
		}
	}
	if !c.Status(503) || !c.Status(429) || c.Status(404) {
		t.Error("status codes and classes no longer match as before")
	}
	want := []string{"5xx", "429", "grpc-cancelled", "grpc-resource-exhausted", "grpc-unavailable", "grpc-unauthenticated"}
	if got := c.Strings(); !slices.Equal(got, want) {
		t.Errorf("Strings() = %v, want %v", got, want)
	}
	// The spelling parses back to the same conditions (xDS and
	// /debug/config carry it).
	if again := conds(c.Strings()...); again.GRPC != c.GRPC || again.Classes != c.Classes || !slices.Equal(again.Codes, c.Codes) {
		t.Errorf("round trip: %+v, want %+v", again, c)
	}
	for n, name := range GRPCCodeNames {
		if n == 0 {
			continue
		}
		if got := conds(name); !got.GRPCStatus(n) || got.GRPC != 1<<n {
			t.Errorf("%s: %+v, want code %d alone", name, got, n)
		}
	}
}

func TestDecodeGRPCConditions(t *testing.T) {
	pols, err := Decode("grpc.yaml", []byte(header+`spec:
  service: orders-service:50051
  retries:
    attempts: 2
    retryOn: [connect-failure, grpc-unavailable]
  circuitBreaker:
    failOn: [5xx, connect-failure, timeout, grpc-resource-exhausted]
`))
	if err != nil {
		t.Fatal(err)
	}
	s := pols[0].Spec
	if !s.Retries.RetryOn.GRPCStatus(14) || !s.Retries.RetryOn.Has(ClassConnectFailure) || s.Retries.RetryOn.Status(503) {
		t.Errorf("retryOn %v", s.Retries.RetryOn.Strings())
	}
	if !s.CircuitBreaker.FailOn.GRPCStatus(8) || s.CircuitBreaker.FailOn.GRPCStatus(14) {
		t.Errorf("failOn %v", s.CircuitBreaker.FailOn.Strings())
	}
}

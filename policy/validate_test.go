package policy

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	if err := BuiltinDefault().Validate(); err != nil {
		t.Errorf("built-in default: %v", err)
	}
	p := &ResiliencePolicy{Spec: Spec{
		Service: "Auth-Service",
		Timeout: time.Second,
		Retries: &Retries{
			Attempts:      MaxAttempts + 1,
			PerTryTimeout: 2 * time.Second,
			Backoff:       Backoff{Base: time.Second, Max: time.Millisecond},
			Budget:        Budget{Ratio: math.NaN()},
		},
		CircuitBreaker:   &CircuitBreaker{FailureRate: &FailureRate{}},
		OutlierDetection: &OutlierDetection{ConsecutiveFailures: -1, BaseEjectionTime: 2 * time.Hour, MaxEjectionTime: time.Hour, MaxEjectionPercent: 101},
	}}
	want := `spec.service: "Auth-Service" is not in canonical form "auth-service"
spec.retries.attempts: must be between 0 and 10, got 11
spec.retries.perTryTimeout: must be <= timeout (1s), got 2s
spec.retries.retryOn: must not be empty: omit it for the default [gateway-error, connect-failure, reset], or set attempts: 0
spec.retries.backoff.max: must be >= base (1s), got 1ms
spec.retries.budget.ratio: must be between 0 and 1, got NaN
spec.circuitBreaker.consecutiveFailures: must be between 1 and 1000, got 0
spec.circuitBreaker.openTimeout: must be > 0 and <= 24h0m0s, got 0s
spec.circuitBreaker.halfOpenRequests: must be between 1 and 1000, got 0
spec.circuitBreaker.failOn: must not be empty: omit it for the default [5xx, connect-failure, reset, timeout]
spec.circuitBreaker.failureRate.threshold: must be > 0 and <= 1, got 0
spec.circuitBreaker.failureRate.minRequests: must be between 1 and 1000000, got 0
spec.circuitBreaker.failureRate.window: must be > 0 and <= 24h0m0s, got 0s
spec.outlierDetection.consecutiveFailures: must be between 0 and 1000, got -1
spec.outlierDetection.baseEjectionTime: must be between 1ms and 1h0m0s, got 2h0m0s
spec.outlierDetection.maxEjectionTime: must be >= baseEjectionTime (2h0m0s), got 1h0m0s
spec.outlierDetection.maxEjectionPercent: must be between 1 and 100, got 101`
	if err := p.Validate(); err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
	noBreaker := &ResiliencePolicy{Spec: Spec{Service: "*", OutlierDetection: DefaultOutlierDetection()}}
	if err := noBreaker.Validate(); err == nil {
		t.Error("nil CircuitBreaker accepted")
	}
	noOutlier := &ResiliencePolicy{Spec: Spec{Service: "*", CircuitBreaker: DefaultCircuitBreaker()}}
	if err := noOutlier.Validate(); err == nil || err.Error() != "spec.outlierDetection: missing (Decode always sets it)" {
		t.Errorf("nil OutlierDetection: %v", err)
	}
}

func TestNormalizeService(t *testing.T) {
	good := map[string]string{
		"*":                         "*",
		"a":                         "a",
		"Auth-Service":              "auth-service",
		"auth.bakery.svc.":          "auth.bakery.svc",
		"auth:00080":                "auth:80",
		"auth:65535":                "auth:65535",
		"10.0.0.1:1":                "10.0.0.1:1",
		"a-b.c-d.svc.cluster.local": "a-b.c-d.svc.cluster.local",
	}
	for in, want := range good {
		if got, err := NormalizeService(in); err != nil || got != want {
			t.Errorf("NormalizeService(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", ".", "..", "a:", ":80", "a:65536", "a:-1", "a:+80", "a:1:2", "a b", "a_b", "é", "-a", "a-", "*.svc", "a:123456",
		string(make([]byte, 64)), "a." + strings.Repeat("b", 64), strings.Repeat("a.", 127) + "a"} {
		if got, err := NormalizeService(in); err == nil {
			t.Errorf("NormalizeService(%q) = %q, want an error", in, got)
		}
	}
}

package outbound

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/minimesh/minimesh/proxy/breaker"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestRetiredBreakerCountsNothing: a try that a breaker allowed, and that
// fails after a policy reload dropped that breaker or
// POST /debug/breakers/reset replaced it, moves neither the destination's
// live breaker nor its series. A half-open probe that failed so counted
// half-open → open after the reload had counted half-open → closed, and
// MinimeshCircuitBreakerOpen reads that transition (docs/dashboards.md);
// a closed breaker's pending failure counted closed → open for a
// destination whose breaker was fresh.
func TestRetiredBreakerCountsNothing(t *testing.T) {
	const before = "  circuitBreaker: {consecutiveFailures: 2, openTimeout: 30s}\n"
	retirers := []struct {
		name   string
		retire func(t *testing.T, d *destinations)
	}{
		{"reload", func(t *testing.T, d *destinations) {
			d.setTable(geoTable(t, "  circuitBreaker: {consecutiveFailures: 2, openTimeout: 31s}\n"))
		}},
		{"reset", func(t *testing.T, d *destinations) {
			if _, ok := d.reset("geo"); !ok {
				t.Fatal("reset found no breaker for geo")
			}
		}},
	}
	for _, tc := range []struct {
		name string
		// inFlight brings geo's breaker to the state it is retired in
		// and returns the Done of the try still in flight.
		inFlight func(t *testing.T, b *breaker.Breaker) breaker.Done
		want     map[[2]string]float64 // transitions (from, to) counted in all
	}{
		{
			name: "half-open probe",
			inFlight: func(t *testing.T, b *breaker.Breaker) breaker.Done {
				failAdmitted(t, b, 2)
				time.Sleep(31 * time.Second)
				return admitTry(t, b)
			},
			want: map[[2]string]float64{{"closed", "open"}: 1, {"open", "half-open"}: 1, {"half-open", "closed"}: 1},
		},
		{
			name: "closed, second failure pending",
			inFlight: func(t *testing.T, b *breaker.Breaker) breaker.Done {
				failAdmitted(t, b, 1)
				return admitTry(t, b)
			},
			want: map[[2]string]float64{},
		},
	} {
		for _, r := range retirers {
			t.Run(tc.name+"/"+r.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					m := telemetry.New(0)
					d := newDestinations("default", geoTable(t, before), m, func(string, ...any) {})
					// The gauge as the handler registers it (breakerStates).
					m.WatchBreakers(func() []telemetry.BreakerState {
						var out []telemetry.BreakerState
						for _, s := range d.statuses() {
							out = append(out, telemetry.BreakerState{Destination: m.Destination(s.Destination).Label(), State: s.State})
						}
						return out
					})
					retired := d.get("geo:80").breaker
					done := tc.inFlight(t, retired)
					r.retire(t, d)
					live := d.get("geo:80").breaker
					if live == retired {
						t.Fatal("geo kept its breaker")
					}
					done(breaker.ErrFailed)

					if st := live.State(); st != breaker.Closed {
						t.Errorf("live breaker %v, want closed", st)
					}
					ms, err := proxytest.ParseMetrics(string(m.Registry.AppendText(nil)))
					if err != nil {
						t.Fatal(err)
					}
					states := []string{"closed", "open", "half-open"}
					for _, from := range states {
						for _, to := range states {
							got, _ := ms.Value("minimesh_circuit_breaker_transitions_total", "destination", "geo:80", "from", from, "to", to)
							if want := tc.want[[2]string{from, to}]; got != want {
								t.Errorf("transitions %s → %s = %v, want %v", from, to, got, want)
							}
						}
					}
					for _, s := range states {
						want := 0.0
						if s == "closed" {
							want = 1
						}
						if got, ok := ms.Value("minimesh_circuit_breaker_state", "destination", "geo:80", "state", s); !ok || got != want {
							t.Errorf("minimesh_circuit_breaker_state{state=%q} = %v (present %v), want %v", s, got, ok, want)
						}
					}
				})
			})
		}
	}
}

func admitTry(t *testing.T, b *breaker.Breaker) breaker.Done {
	t.Helper()
	done, err := b.Allow()
	if err != nil {
		t.Fatalf("try refused: %v", err)
	}
	return done
}

// failAdmitted sends n tries that fail.
func failAdmitted(t *testing.T, b *breaker.Breaker, n int) {
	t.Helper()
	for range n {
		admitTry(t, b)(breaker.ErrFailed)
	}
}

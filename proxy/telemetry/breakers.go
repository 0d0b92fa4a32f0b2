package telemetry

import "github.com/minimesh/minimesh/internal/promtext"

// BreakerState is one destination's breaker state at scrape time.
type BreakerState struct {
	Destination string
	State       string // closed, open, half-open
}

// States are the values of the state label.
var States = []string{"closed", "open", "half-open"}

// WatchBreakers registers minimesh_circuit_breaker_state, read from list
// at every scrape rather than kept current: gobreaker moves from open to
// half-open lazily, so only a read at scrape time is exact.
func (m *Metrics) WatchBreakers(list func() []BreakerState) {
	m.Registry.MustRegister(promtext.NewGaugeCollectFunc("minimesh_circuit_breaker_state",
		"Circuit breaker state per destination: 1 for the current state, 0 for the others.",
		[]string{"destination", "state"}, func(emit promtext.Emit) {
			seen := map[string]bool{}
			for _, b := range list() {
				if seen[b.Destination] {
					continue // several breakers past the cap share "other"
				}
				seen[b.Destination] = true
				for _, s := range States {
					v := 0.0
					if s == b.State {
						v = 1
					}
					emit(v, b.Destination, s)
				}
			}
		}))
}

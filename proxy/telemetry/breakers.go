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
// at every scrape rather than kept current: a breaker moves from open to
// half-open lazily, so only a read at scrape time is exact. Breakers past
// the destination cap share the label "other": it shows the worst of
// their states (open, then half-open, then closed), so that an alert on
// an open breaker fires for them too.
func (m *Metrics) WatchBreakers(list func() []BreakerState) {
	m.Registry.MustRegister(promtext.NewGaugeCollectFunc("minimesh_circuit_breaker_state",
		"Circuit breaker state per destination: 1 for the current state, 0 for the others.",
		[]string{"destination", "state"}, func(emit promtext.Emit) {
			bs := list()
			worst := make(map[string]string, len(bs))
			var order []string
			for _, b := range bs {
				prev, seen := worst[b.Destination]
				if !seen {
					order = append(order, b.Destination)
				}
				if !seen || severity(b.State) > severity(prev) {
					worst[b.Destination] = b.State
				}
			}
			for _, d := range order {
				for _, s := range States {
					v := 0.0
					if s == worst[d] {
						v = 1
					}
					emit(v, d, s)
				}
			}
		}))
}

// severity orders breaker states for a label several breakers share.
func severity(state string) int {
	switch state {
	case "open":
		return 2
	case "half-open":
		return 1
	}
	return 0
}

package telemetry

import "github.com/prometheus/client_golang/prometheus"

// BreakerState is one destination's breaker state at scrape time.
type BreakerState struct {
	Destination string
	State       string // closed, open, half-open
}

// States are the values of the state label.
var States = []string{"closed", "open", "half-open"}

var stateDesc = prometheus.NewDesc("minimesh_circuit_breaker_state",
	"Circuit breaker state per destination: 1 for the current state, 0 for the others.",
	[]string{"destination", "state"}, nil)

// breakerCollector reads breaker states when scraped rather than keeping a
// gauge current: gobreaker moves from open to half-open lazily, so only a
// read at scrape time is exact.
type breakerCollector struct{ list func() []BreakerState }

func (c breakerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- stateDesc }

func (c breakerCollector) Collect(ch chan<- prometheus.Metric) {
	seen := map[string]bool{}
	for _, b := range c.list() {
		if seen[b.Destination] {
			continue // several breakers past the cap share "other"
		}
		seen[b.Destination] = true
		for _, s := range States {
			v := 0.0
			if s == b.State {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, v, b.Destination, s)
		}
	}
}

// WatchBreakers registers the breaker state gauge, read from list at
// every scrape.
func (m *Metrics) WatchBreakers(list func() []BreakerState) {
	m.Registry.MustRegister(breakerCollector{list})
}

package telemetry

import "github.com/minimesh/minimesh/internal/promtext"

// The endpoint metrics carry the destination, never the endpoint: a pod's
// address changes with every restart, so a label per address would grow
// without bound over a sidecar's life. Which pod is slow or ejected is
// /debug/endpoints' business (docs/metrics.md).

func newEjectionsVec() *promtext.CounterVec {
	return promtext.NewCounterVec("minimesh_endpoint_ejections_total",
		"Endpoints (pods) of a destination taken out of its load balancing after consecutive failures (outlierDetection).",
		"destination")
}

// Ejected counts one endpoint of the destination ejected.
func (d *Destination) Ejected() { d.m.ejections.With(d.label).Inc() }

// EndpointCount is how many endpoints of a destination are in one state
// at scrape time.
type EndpointCount struct {
	Destination string
	State       string // one of EndpointStates
	N           int
}

// EndpointStates are the values of minimesh_endpoints' state label.
var EndpointStates = []string{"ready", "terminating", "ejected"}

// WatchEndpoints registers the endpoint gauge, minimesh_endpoints, read
// from list at every scrape.
func (m *Metrics) WatchEndpoints(list func() []EndpointCount) {
	m.Registry.MustRegister(promtext.NewGaugeCollectFunc("minimesh_endpoints",
		"Endpoints the sidecar balances a destination's requests over (from the control plane), by state: ready, terminating (used only when no ready one is left), ejected.",
		[]string{"destination", "state"}, func(emit promtext.Emit) {
			// Destinations past the cap share "other": their counts add up.
			sum := map[[2]string]int{}
			var order [][2]string
			for _, e := range list() {
				k := [2]string{e.Destination, e.State}
				if _, ok := sum[k]; !ok {
					order = append(order, k)
				}
				sum[k] += e.N
			}
			for _, k := range order {
				emit(float64(sum[k]), k[0], k[1])
			}
		}))
}

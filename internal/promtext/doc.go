// Package promtext holds Prometheus metrics (counters, gauges, histograms,
// and families read at scrape time) and a registry that serves them in the
// Prometheus text exposition format 0.0.4, for the sidecar, which must not
// link github.com/prometheus/client_golang: that client and the protobuf
// runtime it pulls in cost the sidecar about 2 MB of binary pages and
// init-time heap (docs/metrics.md, "Why the sidecar has its own exposition").
//
// The output is what client_golang's registry and promhttp write for the
// same metrics: families sorted by name, each with its # HELP and # TYPE
// lines, series sorted by their label values taken in label-name order,
// labels written in name order (le and quantile last), values formatted as
// Go's shortest 'g' form with +Inf, -Inf and NaN spelled so, label values
// escaped (\\, \", \n) and HELP escaped (\\, \n). A family with no series
// is left out.
//
// Updates of a resolved child (Counter.Inc, Gauge.Set, Histogram.Observe)
// are atomic operations: no lock, no allocation. Resolving a child by its
// label values (With) takes the vector's lock only the first time.
package promtext

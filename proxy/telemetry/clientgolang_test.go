package telemetry

import (
	"bytes"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/wellknown"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestSameSeriesAsClientGolang: the sidecar's metrics, served by
// internal/promtext, read to Prometheus as they did when client_golang
// served them. The families are registered here as they were with
// client_golang (test-only: the sidecar does not link it), the same
// operations done on both, and the text compared byte for byte apart from
// the go_* and process_* families, whose values move between two reads
// (internal/promtext's tests compare those with client_golang's
// collectors).
func TestSameSeriesAsClientGolang(t *testing.T) {
	m := New(0)
	old := newClientGolangMetrics()

	geo := m.Destination("geo-service:8000")
	old.destination("geo-service:8000")
	for _, o := range []struct {
		method string
		code   int
		sec    float64
	}{{"GET", 200, 0.003}, {"GET", 200, 0.0001}, {"POST", 503, 0.2}, {"BREW", 418, 12}, {"GET", 504, 2.5}} {
		geo.Observe(o.method, o.code, o.sec)
		old.duration.WithLabelValues(Outbound, "geo-service:8000").Observe(o.sec)
		old.requests.WithLabelValues(Outbound, "geo-service:8000", methodLabel(methodIndex(o.method)), strconv.Itoa(o.code)).Inc()
	}
	geo.Rejected()
	old.rejected.WithLabelValues("geo-service:8000").Inc()
	geo.Retry("connect-failure")
	old.retries.WithLabelValues("geo-service:8000", "connect-failure").Inc()
	geo.Transition("closed", "open")
	old.transitions.WithLabelValues("geo-service:8000", "closed", "open").Inc()
	geo.TCP().Sent.Add(1500)
	geo.TCP().Received.Add(1 << 30)
	old.tcpSent.WithLabelValues(Outbound, "geo-service:8000").Add(1500)
	old.tcpReceived.WithLabelValues(Outbound, "geo-service:8000").Add(1 << 30)
	geo.TCPConnection("ok")
	old.tcpConns.WithLabelValues(Outbound, "geo-service:8000", "ok").Inc()
	geo.GRPC(14)
	old.grpc.WithLabelValues(Outbound, "geo-service:8000", "UNAVAILABLE").Inc()
	geo.Ejected()
	old.ejections.WithLabelValues("geo-service:8000").Inc()

	// A destination name with every character the format escapes.
	odd := "odd\\\"name\n:80"
	m.Destination(odd).Observe("GET", 200, 0.05)
	old.destination(odd)
	old.duration.WithLabelValues(Outbound, odd).Observe(0.05)
	old.requests.WithLabelValues(Outbound, odd, "GET", "200").Inc()

	in := m.Inbound("8080")
	in.Observe("GET", 200, 0.0002)
	old.duration.WithLabelValues(Inbound, "8080").Observe(0.0002)
	old.requests.WithLabelValues(Inbound, "8080", "GET", "200").Inc()

	m.PolicyReload(true)
	m.PolicyReload(false)
	old.reloads.WithLabelValues("success").Inc()
	old.reloads.WithLabelValues("error").Inc()
	m.spansDropped.Add(3)
	old.spansDropped.Add(3)

	for _, l := range []struct {
		name          string
		open, refused float64
	}{{"outbound", 3, 7}, {"admin", 1, 0}} {
		m.Listener(l.name, func() int64 { return int64(l.open) }, func() uint64 { return uint64(l.refused) })
		labels := prometheus.Labels{"listener": l.name}
		old.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "minimesh_connections_open",
				Help: "Client connections open on the listener, tunnels included.", ConstLabels: labels},
				func() float64 { return l.open }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "minimesh_connections_refused_total",
				Help: "Client connections closed as soon as accepted because the listener's connection cap was reached.", ConstLabels: labels},
				func() float64 { return l.refused }))
	}
	m.ListenerEvicted("admin", func() uint64 { return 2 })
	old.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "minimesh_connections_evicted_total",
		Help: "Client connections closed to give their place to a newcomer at the listener's connection cap.", ConstLabels: prometheus.Labels{"listener": "admin"}},
		func() float64 { return 2 }))

	// Past the cap, "other" shows the worst of its breakers' states: an
	// open one behind a closed one is open (it read closed, first seen).
	breakers := []BreakerState{{"geo-service:8000", "open"}, {Other, "closed"}, {Other, "open"}, {Other, "half-open"}, {"a-service:80", "closed"}}
	m.WatchBreakers(func() []BreakerState { return breakers })
	old.reg.MustRegister(constCollector(func(ch chan<- prometheus.Metric) {
		d := prometheus.NewDesc("minimesh_circuit_breaker_state",
			"Circuit breaker state per destination: 1 for the current state, 0 for the others.", []string{"destination", "state"}, nil)
		for _, b := range []BreakerState{breakers[0], {Other, "open"}, breakers[4]} {
			for _, s := range States {
				v := 0.0
				if s == b.State {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, b.Destination, s)
			}
		}
	}))
	endpoints := []EndpointCount{{"geo-service:8000", "ready", 3}, {Other, "ready", 1}, {Other, "ready", 2}, {"geo-service:8000", "ejected", 1}}
	m.WatchEndpoints(func() []EndpointCount { return endpoints })
	old.reg.MustRegister(constCollector(func(ch chan<- prometheus.Metric) {
		d := prometheus.NewDesc("minimesh_endpoints",
			"Endpoints the sidecar balances a destination's requests over (from the control plane), by state: ready, terminating (used only when no ready one is left), ejected.",
			[]string{"destination", "state"}, nil)
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, 3, "geo-service:8000", "ready")
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, 3, Other, "ready")
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, 1, "geo-service:8000", "ejected")
	}))

	got := withoutRuntime(string(m.Registry.AppendText(nil)))
	mfs, err := old.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	want := withoutRuntime(b.String())
	if strings.Count(got, "\nminimesh_") < 100 {
		t.Errorf("too few minimesh_ series to compare:\n%s", got)
	}
	if got != want {
		t.Errorf("the sidecar's metrics differ from client_golang's:\ngot\n%s\nwant\n%s", got, want)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	if _, err := p.TextToMetricFamilies(strings.NewReader(string(m.Registry.AppendText(nil)))); err != nil {
		t.Errorf("expfmt cannot parse /metrics: %v", err)
	}
}

// withoutRuntime drops the lines of the go_* and process_* families.
func withoutRuntime(text string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		name := strings.TrimPrefix(strings.TrimPrefix(l, "# HELP "), "# TYPE ")
		if !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

type constCollector func(ch chan<- prometheus.Metric)

func (c constCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }
func (c constCollector) Collect(ch chan<- prometheus.Metric) { c(ch) }

// clientGolangMetrics are the sidecar's families as telemetry registered
// them with client_golang before internal/promtext.
type clientGolangMetrics struct {
	reg                                                                  *prometheus.Registry
	requests, transitions, rejected, retries, reloads, tcpConns, tcpSent *prometheus.CounterVec
	tcpReceived, grpc, ejections                                         *prometheus.CounterVec
	duration                                                             *prometheus.HistogramVec
	spansDropped                                                         prometheus.Counter
}

func newClientGolangMetrics() *clientGolangMetrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	m := &clientGolangMetrics{
		reg:         prometheus.NewRegistry(),
		requests:    counter("minimesh_requests_total", "Requests handled by the sidecar, by direction, destination, method and response code.", "direction", "destination", "method", "code"),
		transitions: counter("minimesh_circuit_breaker_transitions_total", "Circuit breaker state changes.", "destination", "from", "to"),
		rejected:    counter("minimesh_circuit_breaker_rejected_total", "Requests answered at once because the destination's breaker was open.", "destination"),
		retries:     counter("minimesh_retries_total", "Retries sent, by the condition that caused them.", "destination", "reason"),
		reloads:     counter("minimesh_policy_reloads_total", "Policy loads, by result (success or error).", "result"),
		tcpConns:    counter("minimesh_tcp_connections_total", "Connections relayed as bytes, by how they ended: redirected ones as opaque TCP (TLS, opaque ports, unknown protocols), CONNECT tunnels, and upgraded connections (WebSocket) after their 101.", "direction", "destination", "result"),
		tcpSent:     counter("minimesh_tcp_sent_bytes_total", "Bytes the client sent to the server on connections relayed as bytes (opaque TCP, tunnels, upgraded connections; the app upstream, or a caller into the app), counted as they pass.", "direction", "destination"),
		tcpReceived: counter("minimesh_tcp_received_bytes_total", "Bytes the server sent to the client on connections relayed as bytes (opaque TCP, tunnels, upgraded connections; the upstream to the app, or the app to a caller), counted as they pass.", "direction", "destination"),
		grpc:        counter("minimesh_grpc_requests_total", "gRPC calls handled by the sidecar, by direction, destination and the gRPC status the client got (the sidecar's own answers included).", "direction", "destination", "grpc_code"),
		ejections:   counter("minimesh_endpoint_ejections_total", "Endpoints (pods) of a destination taken out of its load balancing after consecutive failures (outlierDetection).", "destination"),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "minimesh_request_duration_seconds",
			Help: "Time from receiving a request to having its response headers (the sidecar's own answers included).", Buckets: Buckets},
			[]string{"direction", "destination"}),
		spansDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "minimesh_spans_dropped_total",
			Help: "Spans dropped instead of exported: queue full or collector unreachable."}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "minimesh_build_info", Help: "The sidecar's version; always 1."},
		[]string{"version", "goversion"})
	build.WithLabelValues(wellknown.Version, runtime.Version()).Set(1)
	m.reg.MustRegister(m.requests, m.duration, m.transitions, m.rejected, m.retries, m.reloads, m.spansDropped, build,
		m.tcpConns, m.tcpSent, m.tcpReceived, m.grpc, m.ejections,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "minimesh_access_log_lines_dropped_total",
			Help: "Access log lines dropped: stdout did not keep up, or was blocked at shutdown."}, func() float64 { return 0 }))
	for _, r := range []string{"success", "error"} {
		m.reloads.WithLabelValues(r)
	}
	return m
}

// destination makes the series Metrics.Destination made.
func (m *clientGolangMetrics) destination(label string) {
	m.duration.WithLabelValues(Outbound, label)
	m.rejected.WithLabelValues(label)
	m.ejections.WithLabelValues(label)
	for _, t := range [][2]string{{"closed", "open"}, {"open", "half-open"}, {"half-open", "closed"}, {"half-open", "open"}} {
		m.transitions.WithLabelValues(label, t[0], t[1])
	}
}

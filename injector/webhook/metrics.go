package webhook

import (
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	certmetrics "sigs.k8s.io/controller-runtime/pkg/certwatcher/metrics"

	"github.com/minimesh/minimesh/internal/connlimit"
	"github.com/minimesh/minimesh/wellknown"
)

// Metrics are the controller's: what it admitted and how long it took.
// The histogram's buckets are fine below a millisecond, where a healthy
// injector answers, and reach the webhook's timeout.
type Metrics struct {
	Registry    *prometheus.Registry
	admissions  *prometheus.CounterVec
	duration    prometheus.Histogram
	badRequests prometheus.Counter
	throttled   prometheus.Counter
	// conns is the webhook listener once Run listens: it counts the
	// connections it holds, refuses and evicts.
	conns atomic.Pointer[connlimit.Listener]
	// admin is the admin listener once Run listens: its resets and
	// evictions are the kubelet's probes and Prometheus being crowded
	// out, which the sidecar's admin port counts too.
	admin atomic.Pointer[connlimit.Listener]
}

// NewMetrics registers the metrics on a registry of their own, with the
// Go and process collectors (memory and CPU of the controller) and the
// certificate watcher's counters: a rotated certificate that fails to load
// is otherwise only a log line until the old one expires.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "minimesh_injector_admissions_total",
			Help: "Pod admissions by result: injected, skipped (not asked, opted out, already injected), denied (bad annotation), error.",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "minimesh_injector_admission_duration_seconds",
			Help:    "Time to answer one AdmissionReview, from its first byte read to the answer written.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}),
		badRequests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "minimesh_injector_bad_requests_total",
			Help: "Requests to /inject that were not an AdmissionReview (answered 400).",
		}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "minimesh_injector_throttled_total",
			Help: "Requests to /inject answered 429: every admission slot stayed busy for the queue timeout, or the bodies being read held their budget.",
		}),
	}
	// listener reads a listener's count, 0 before Run listens.
	listener := func(p *atomic.Pointer[connlimit.Listener], f func(*connlimit.Listener) float64) func() float64 {
		return func() float64 {
			if l := p.Load(); l != nil {
				return f(l)
			}
			return 0
		}
	}
	open := func(l *connlimit.Listener) float64 { return float64(l.Open()) }
	refusals := func(l *connlimit.Listener) float64 { return float64(l.Refused()) }
	evictions := func(l *connlimit.Listener) float64 { return float64(l.Evicted()) }
	conns := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "minimesh_injector_connections",
		Help: "Connections the webhook listener holds.",
	}, listener(&m.conns, open))
	refused := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "minimesh_injector_connections_refused_total",
		Help: "Connections to the webhook listener reset as soon as accepted: their peer address held its share of --webhook-max-connections, or no place could be freed.",
	}, listener(&m.conns, refusals))
	evicted := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "minimesh_injector_connections_evicted_total",
		Help: "Webhook connections closed at --webhook-max-connections to give their place to a newcomer (an idle one first).",
	}, listener(&m.conns, evictions))
	adminRefused := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "minimesh_injector_admin_connections_refused_total",
		Help: "Connections to the admin listener (probes, /metrics) reset as soon as accepted: their peer address held its 16 of the 64 places, or no place could be freed.",
	}, listener(&m.admin, refusals))
	adminEvicted := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "minimesh_injector_admin_connections_evicted_total",
		Help: "Admin connections closed at the admin listener's 64 to give their place to a newcomer (an idle one first).",
	}, listener(&m.admin, evictions))
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "minimesh_build_info",
		Help: "The controller's version; always 1.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(wellknown.Version, runtime.Version()).Set(1)
	for _, r := range []string{ResultInjected, ResultSkipped, ResultDenied, ResultError} {
		m.admissions.WithLabelValues(r)
	}
	m.Registry.MustRegister(m.admissions, m.duration, m.badRequests, m.throttled, conns, refused, evicted, adminRefused, adminEvicted, build,
		certmetrics.ReadCertificateTotal, certmetrics.ReadCertificateErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) observe(result string, d time.Duration) {
	m.admissions.WithLabelValues(result).Inc()
	m.duration.Observe(d.Seconds())
}

// Package observability checks the Grafana dashboards and Prometheus alert
// rules shipped in charts/minimesh against the metrics the sidecar really
// exports: every PromQL expression must parse with Prometheus's own parser
// and name only metrics (and labels) that proxy/telemetry registers, or the
// few external metrics listed in externalMetrics.
package observability

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/proxy/telemetry"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

const (
	chartDir      = "../../charts/minimesh"
	dashboardsDir = chartDir + "/dashboards"
	alertsDir     = chartDir + "/alerts"
	alertsFile    = alertsDir + "/minimesh-alerts.yaml"
	alertsTest    = alertsDir + "/minimesh-alerts_test.yaml"
	docsFile      = "../../docs/dashboards.md"
)

// targetLabels are the labels Prometheus adds to every series of a scraped
// sidecar: job and instance always, namespace, pod and service from the
// Kubernetes service discovery relabelling documented in
// docs/dashboards.md ("Scrape configuration assumed").
var targetLabels = []string{"job", "instance", "namespace", "pod", "service"}

// externalMetrics are the only metrics the dashboards and alerts may use
// that the sidecar does not export itself, with the labels they carry.
//   - up: made by Prometheus for every scrape target; the only way to see a
//     sidecar whose /metrics does not answer at all.
//   - kube_pod_*container_status_restarts_total: kube-state-metrics; a
//     process cannot count its own restarts. The sidecar is a native
//     sidecar (init container, restartPolicy: Always), so its restarts are
//     in the init-container metric; the other one covers a sidecar
//     injected as a regular container. Their namespace/pod/container labels
//     are kube-state-metrics' own (scraped with honor_labels).
var externalMetrics = map[string][]string{
	"up": targetLabels,
	"kube_pod_container_status_restarts_total":      {"job", "instance", "namespace", "pod", "container", "uid"},
	"kube_pod_init_container_status_restarts_total": {"job", "instance", "namespace", "pod", "container", "uid"},
}

// family is one exported metric family: its type and label names.
type family struct {
	typ    dto.MetricType
	labels map[string]bool
}

// sidecarFamilies builds the sidecar's real registry, makes one
// observation on every vector so that each family has a series (a vector
// without children is not served), and returns the families its text parses into.
func sidecarFamilies(t testing.TB) map[string]family {
	t.Helper()
	m := telemetry.New(0)
	d := m.Destination("x")
	d.Observe("GET", 200, 0.01)
	d.GRPC(14)
	d.Rejected()
	d.Retry("503")
	d.Transition("closed", "open")
	d.Ejected()
	m.PolicyReload(true)
	m.WatchEndpoints(func() []telemetry.EndpointCount {
		return []telemetry.EndpointCount{{Destination: "x", State: "ejected", N: 1}}
	})
	m.WatchBreakers(func() []telemetry.BreakerState {
		return []telemetry.BreakerState{{Destination: "x", State: "open"}}
	})
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(m.Registry.AppendText(nil)))
	if err != nil {
		t.Fatalf("parse the sidecar's metrics: %v", err)
	}
	out := map[string]family{}
	for _, mf := range mfs {
		f := family{typ: mf.GetType(), labels: map[string]bool{}}
		for _, metric := range mf.GetMetric() {
			for _, lp := range metric.GetLabel() {
				f.labels[lp.GetName()] = true
			}
		}
		out[mf.GetName()] = f
	}
	for _, name := range []string{"minimesh_requests_total", "minimesh_request_duration_seconds",
		"minimesh_circuit_breaker_state", "minimesh_build_info", "process_resident_memory_bytes"} {
		if _, ok := out[name]; !ok {
			t.Fatalf("the sidecar's registry lacks %s: the observations above no longer reach every vector", name)
		}
	}
	return out
}

// checker validates PromQL expressions against the metrics that exist.
type checker struct {
	families map[string]family
	parser   parser.Parser
}

func newChecker(t testing.TB) *checker {
	return &checker{families: sidecarFamilies(t), parser: parser.NewParser(parser.Options{})}
}

// labelsOf returns the label names a series of metric name may carry, or
// an error when no such metric is exported. Histogram series are named
// NAME_bucket (with le), NAME_sum and NAME_count; summaries NAME_sum,
// NAME_count and NAME (with quantile).
func (c *checker) labelsOf(name string) (map[string]bool, error) {
	with := func(base map[string]bool, extra ...string) map[string]bool {
		out := map[string]bool{}
		for l := range base {
			out[l] = true
		}
		for _, l := range append(extra, targetLabels...) {
			out[l] = true
		}
		return out
	}
	if ls, ok := externalMetrics[name]; ok {
		return with(nil, ls...), nil
	}
	if f, ok := c.families[name]; ok {
		switch f.typ {
		case dto.MetricType_HISTOGRAM:
			return nil, fmt.Errorf("%s is a histogram: select %s_bucket, _sum or _count", name, name)
		case dto.MetricType_SUMMARY:
			return with(f.labels, "quantile"), nil
		}
		return with(f.labels), nil
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		f, ok := c.families[base]
		switch {
		case !ok:
		case f.typ == dto.MetricType_HISTOGRAM && suffix == "_bucket":
			return with(f.labels, "le"), nil
		case f.typ == dto.MetricType_HISTOGRAM || f.typ == dto.MetricType_SUMMARY:
			if suffix != "_bucket" {
				return with(f.labels), nil
			}
		}
		if ok {
			return nil, fmt.Errorf("%s: %s is a %s, it has no %s series", name, base, f.typ, suffix)
		}
	}
	return nil, fmt.Errorf("metric %s is not exported by the sidecar (proxy/telemetry) nor in the external allow-list", name)
}

// selectors parses expr and returns its vector selectors (those inside
// range selectors and subqueries included).
func (c *checker) selectors(expr string) ([]*parser.VectorSelector, error) {
	e, err := c.parser.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var out []*parser.VectorSelector
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			out = append(out, vs)
		}
		return nil
	})
	return out, nil
}

// check parses expr and returns every problem: a parse error, a selector
// without a metric name, a metric nobody exports, a label matcher on a
// label the metric does not have.
func (c *checker) check(expr string) []error {
	sels, err := c.selectors(expr)
	if err != nil {
		return []error{fmt.Errorf("parse %q: %w", expr, err)}
	}
	if len(sels) == 0 {
		return []error{fmt.Errorf("%q selects no metric", expr)}
	}
	var errs []error
	for _, vs := range sels {
		name := selectorName(vs)
		if name == "" {
			errs = append(errs, fmt.Errorf("selector %s has no fixed metric name", vs))
			continue
		}
		ls, err := c.labelsOf(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, m := range vs.LabelMatchers {
			if m.Name != model.MetricNameLabel && !ls[m.Name] {
				errs = append(errs, fmt.Errorf("%s: %s has no label %q (it has %s)", vs, name, m.Name, keys(ls)))
			}
		}
	}
	return errs
}

// metricNames returns the metric names expr selects (for reports).
func (c *checker) metricNames(expr string) []string {
	sels, _ := c.selectors(expr)
	var out []string
	for _, vs := range sels {
		out = append(out, selectorName(vs))
	}
	return out
}

func selectorName(vs *parser.VectorSelector) string {
	if vs.Name != "" {
		return vs.Name
	}
	for _, m := range vs.LabelMatchers {
		if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
			return m.Value
		}
	}
	return ""
}

func keys(m map[string]bool) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// The checker must be able to fail: a metric nobody exports, a label the
// metric lacks, a counter read as a histogram, a broken expression.
func TestCheckerRejects(t *testing.T) {
	c := newChecker(t)
	for _, tc := range []struct{ expr, want string }{
		{`sum(rate(minimesh_nonexistent_total[5m]))`, "minimesh_nonexistent_total is not exported"},
		{`sum(rate(minimesh_requests_total[5m])) / sum(rate(minimesh_nonexistent_total[5m]))`, "minimesh_nonexistent_total is not exported"},
		{`rate(minimesh_circuit_breaker_rejected_total{direction="outbound"}[5m])`, `has no label "direction"`},
		{`rate(minimesh_requests_total_bucket[5m])`, "it has no _bucket series"},
		{`rate(minimesh_requests_total_sum[5m])`, "it has no _sum series"},
		{`rate(minimesh_request_duration_seconds[5m])`, "is a histogram"},
		{`{__name__=~"minimesh_.*"}`, "no fixed metric name"},
		{`sum(rate(minimesh_requests_total[5m])`, "parse"},
		{`vector(1)`, "selects no metric"},
	} {
		errs := c.check(tc.expr)
		if len(errs) == 0 {
			t.Errorf("check(%s) found nothing wrong, want an error containing %q", tc.expr, tc.want)
			continue
		}
		if !strings.Contains(fmt.Sprint(errs), tc.want) {
			t.Errorf("check(%s) = %v, want an error containing %q", tc.expr, errs, tc.want)
		}
	}
}

func TestCheckerAccepts(t *testing.T) {
	c := newChecker(t)
	for _, expr := range []string{
		`histogram_quantile(0.99, sum by (le) (rate(minimesh_request_duration_seconds_bucket{direction="outbound", destination="x", service="s"}[5m])))`,
		`rate(minimesh_request_duration_seconds_sum[5m]) / rate(minimesh_request_duration_seconds_count[5m])`,
		`{__name__="minimesh_build_info", version="dev"}`,
		`go_gc_duration_seconds{quantile="0.5"} + on() group_left rate(go_gc_duration_seconds_count[1m])`,
		`up{job="minimesh-proxy"} == 0`,
		`increase(kube_pod_init_container_status_restarts_total{container="minimesh-proxy"}[10m])`,
	} {
		if errs := c.check(expr); len(errs) > 0 {
			t.Errorf("check(%s) = %v, want no error", expr, errs)
		}
	}
}

func TestSubstitute(t *testing.T) {
	vars := map[string]string{"namespace": ".*", "job": "minimesh-proxy"}
	got, err := substitute(`rate(x{namespace=~"$namespace", job="${job}", a="[[namespace]]", b="${namespace:regex}"}[$__rate_interval])`, vars)
	if err != nil {
		t.Fatal(err)
	}
	want := `rate(x{namespace=~".*", job="minimesh-proxy", a=".*", b=".*"}[5m])`
	if got != want {
		t.Errorf("substitute = %s, want %s", got, want)
	}
	if _, err := substitute(`x{a="$nope"}`, vars); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("substitute of an undefined variable: err = %v, want one naming it", err)
	}
}

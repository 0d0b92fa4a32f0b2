package telemetry

import (
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/grafana"
	"github.com/minimesh/minimesh/e2e/internal/jaeger"
	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/prom"
	"github.com/minimesh/minimesh/e2e/internal/tools"
)

// retryingPolicy: failing-service's requests are retried once on 5xx, and
// its breaker opens on the 2nd failure in a row and stays open for 30 s.
const retryingPolicy = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: failing, namespace: bakery-ia}
spec:
  service: failing-service
  retries:
    attempts: 1
    retryOn: [5xx]
    backoff: {base: 1ms, max: 5ms}
  circuitBreaker:
    consecutiveFailures: 2
    openTimeout: 30s
`

// TestPrometheusScrapesSidecar has a real Prometheus scrape a real sidecar
// that carries some traffic (healthy, failing with retries, fast-failing
// behind an open breaker), then evaluates every query of the Grafana
// dashboards that exist in charts/minimesh/dashboards and requires each to
// return data. It also lints the raw exposition with promtool.
func TestPrometheusScrapesSidecar(t *testing.T) {
	promtool := proc.NeedTool(t, "promtool")
	j := jaeger.StartT(t) // so that the span metrics are live, as in a cluster
	ok := newUpstream(t, http.StatusOK)
	bad := newUpstream(t, http.StatusOK)
	sc := startSidecar(t, sidecarOpts{
		OTLP: j.OTLPAddr,
		Resolve: map[string]string{
			"orders-service:8000":  ok.Addr,
			"failing-service:8000": bad.Addr,
		},
		Policies: retryingPolicy,
	})
	p := prom.StartT(t, prom.Config{
		Job:      "minimesh-proxy",
		Interval: time.Second,
		Targets: []prom.Target{{
			Addr: sc.Admin,
			// What the pod's Kubernetes service discovery would add.
			Labels: map[string]string{"namespace": namespace, "pod": podName, "service": serviceName},
		}},
	})
	if err := p.WaitScraped(20 * time.Second); err != nil {
		t.Fatal(err)
	}

	// 200 requests over about 3 s, so that several scrapes see them; one
	// in four goes to failing-service, which is healthy for the first half
	// (as a service is before it breaks: its series exist before its
	// breaker trips) and answers 500 after that.
	codes := map[int]int{}
	for i := range 200 {
		if i == 100 {
			bad.setStatus(http.StatusInternalServerError)
		}
		u := "http://orders-service:8000/orders/" + fmt.Sprint(i)
		if i%4 == 3 {
			u = "http://failing-service:8000/work"
		}
		resp, _ := sc.get(t, u, nil)
		codes[resp.StatusCode]++
		time.Sleep(15 * time.Millisecond)
	}
	// failing-service: 25 healthy answers; then the first failing request's
	// two tries (1 retry) open its breaker (consecutiveFailures: 2, open
	// 30 s), so the app gets that 500 and the other 24 fail fast.
	if want := map[int]int{200: 175, 500: 1, 503: 24}; fmt.Sprint(codes) != fmt.Sprint(want) {
		t.Fatalf("status counts %v, want %v", codes, want)
	}

	exposition, err := sc.metrics()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := prom.CheckMetrics(promtool, exposition); err != nil || out != "" {
		t.Errorf("promtool check metrics on the sidecar's /metrics: %v\n%s", err, out)
	}

	exprs := dashboardExprs(t)
	if len(exprs) == 0 {
		t.Fatal("no dashboard expressions found in charts/minimesh/dashboards")
	}
	if _, err := p.WaitFor(`minimesh_requests_total{namespace="bakery-ia", pod="tenant-abc", service="tenant-service"}`, prom.NonEmpty, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// Every query gets a share of a bounded wait: rate() needs two scrapes
	// after the traffic.
	deadline := time.Now().Add(20 * time.Second)
	for _, e := range exprs {
		wait := max(time.Until(deadline), time.Second)
		v, err := p.WaitFor(e.query, prom.NonEmpty, wait)
		if err != nil {
			t.Errorf("%s, %s: %v\n  query: %s", e.file, e.panel, err, e.query)
			continue
		}
		t.Logf("%s, %s: %d series, e.g. %s", e.file, e.panel, len(v), v[0])
	}
}

// dashboardExpr is one query of one dashboard, with the Grafana variables
// replaced so that Prometheus can evaluate it.
type dashboardExpr struct {
	file, panel, query string
}

// kubeMetric names the kube-state-metrics series that some panels join
// with; this test has no kube-state-metrics, so those panels are skipped.
var kubeMetric = regexp.MustCompile(`\bkube_[a-z_]+`)

// dashboardExprs loads the queries of charts/minimesh/dashboards/*.json
// (e2e/internal/grafana), with Grafana's default variable values and
// windows of a minute.
func dashboardExprs(t *testing.T) []dashboardExpr {
	t.Helper()
	root, err := tools.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "charts", "minimesh", "dashboards", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	var out []dashboardExpr
	for _, f := range files {
		d, _, err := grafana.Load(f)
		if err != nil {
			t.Error(err)
			continue
		}
		vars := grafana.DefaultVars(d)
		vars["__rate_interval"], vars["__interval"], vars["__range"], vars["__range_s"] = "1m", "1m", "1m", "60"
		for _, q := range grafana.Queries(d) {
			if m := kubeMetric.FindString(q.Expr); m != "" {
				t.Logf("%s, %s: skipped, it needs %s (kube-state-metrics)", filepath.Base(f), q.Where, m)
				continue
			}
			if strings.Contains(q.Expr, `direction="inbound"`) {
				// Inbound requests exist only under inbound capture
				// (iptables); e2e/cluster and e2e/observability check
				// these panels with inbound traffic.
				t.Logf("%s, %s: skipped, it needs inbound capture", filepath.Base(f), q.Where)
				continue
			}
			if strings.Contains(q.Expr, "minimesh_endpoints{") {
				// Endpoints come only from the control plane (EDS); this
				// sidecar reads policy files. e2e/cluster (the chart's
				// controller) and e2e/observability check these panels.
				t.Logf("%s, %s: skipped, it needs endpoints from the control plane", filepath.Base(f), q.Where)
				continue
			}
			expr, err := grafana.Substitute(q.Expr, vars)
			if err != nil {
				t.Errorf("%s, %s: %v", filepath.Base(f), q.Where, err)
				continue
			}
			out = append(out, dashboardExpr{file: filepath.Base(f), panel: q.Where, query: expr})
		}
	}
	return out
}

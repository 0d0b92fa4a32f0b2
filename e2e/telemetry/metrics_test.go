package telemetry

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

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
			t.Errorf("%s, panel %q: %v\n  query: %s", e.file, e.panel, err, e.query)
			continue
		}
		t.Logf("%s, panel %q: %d series, e.g. %s", e.file, e.panel, len(v), v[0])
	}
}

// dashboardExpr is one target of one panel, with the Grafana variables
// replaced so that Prometheus can evaluate it.
type dashboardExpr struct {
	file, panel, query string
}

// kubeMetric names the kube-state-metrics series that some panels join
// with; this test has no kube-state-metrics, so those panels are skipped.
var kubeMetric = regexp.MustCompile(`\bkube_[a-z_]+`)

// dashboardExprs loads the queries of charts/minimesh/dashboards/*.json.
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
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d grafanaDashboard
		if err := json.Unmarshal(b, &d); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		consts := map[string]string{}
		for _, v := range d.Templating.List {
			if v.Type == "constant" {
				consts[v.Name] = textOf(v.Query)
			}
		}
		var walk func(ps []grafanaPanel)
		walk = func(ps []grafanaPanel) {
			for _, p := range ps {
				for _, tg := range p.Targets {
					if strings.TrimSpace(tg.Expr) == "" {
						continue
					}
					if m := kubeMetric.FindString(tg.Expr); m != "" {
						t.Logf("%s, panel %q: skipped, it needs %s (kube-state-metrics)", filepath.Base(f), p.Title, m)
						continue
					}
					if strings.Contains(tg.Expr, `direction="inbound"`) {
						// Inbound requests exist only under inbound capture
						// (iptables); e2e/cluster and e2e/observability
						// check these panels with inbound traffic.
						t.Logf("%s, panel %q: skipped, it needs inbound capture", filepath.Base(f), p.Title)
						continue
					}
					out = append(out, dashboardExpr{file: filepath.Base(f), panel: p.Title, query: substitute(tg.Expr, consts)})
				}
				walk(p.Panels)
			}
		}
		walk(d.Panels)
	}
	return out
}

type grafanaDashboard struct {
	Panels     []grafanaPanel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type grafanaPanel struct {
	Title   string         `json:"title"`
	Panels  []grafanaPanel `json:"panels"` // the rows' collapsed panels
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// textOf is a variable's query as text: a string, or the "query" field of
// an object.
func textOf(q any) string {
	switch q := q.(type) {
	case string:
		return q
	case map[string]any:
		if s, ok := q["query"].(string); ok {
			return s
		}
	}
	return ""
}

// grafanaVar matches $name, ${name} and ${name:format}.
var grafanaVar = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)`)

// substitute replaces Grafana's variables: the range ones by 1m, constants
// by their value, and any other (label-matcher variables such as
// $namespace, $service, $destination) by .* so that it matches every
// series.
func substitute(expr string, consts map[string]string) string {
	return grafanaVar.ReplaceAllStringFunc(expr, func(m string) string {
		sub := grafanaVar.FindStringSubmatch(m)
		name := sub[1] + sub[2]
		switch {
		case slices.Contains([]string{"__rate_interval", "__interval", "__range", "__range_s"}, name):
			if name == "__range_s" {
				return "60"
			}
			return "1m"
		case consts[name] != "":
			return consts[name]
		default:
			return ".*"
		}
	})
}

func TestSubstitute(t *testing.T) {
	got := substitute(`sum(rate(x{namespace=~"$namespace", service=~"${service}", job=~"$job"}[$__rate_interval])) + increase(y[$__range])`,
		map[string]string{"job": "minimesh-proxy"})
	want := `sum(rate(x{namespace=~".*", service=~".*", job=~"minimesh-proxy"}[1m])) + increase(y[1m])`
	if got != want {
		t.Errorf("substitute:\n got %s\nwant %s", got, want)
	}
}

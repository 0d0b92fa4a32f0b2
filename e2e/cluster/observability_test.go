package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/e2e/internal/cluster"
	"github.com/minimesh/minimesh/e2e/internal/grafana"
	"github.com/minimesh/minimesh/e2e/internal/jaeger"
	"github.com/minimesh/minimesh/e2e/internal/prom"
	"github.com/minimesh/minimesh/e2e/internal/tools"
)

// gone is a Service with no endpoints (kube-proxy refuses its connections)
// and a policy whose breaker opens at the first failure and stays open for
// an hour: the breaker left open that the alert must report.
const gone = `apiVersion: v1
kind: Service
metadata: {name: gone, namespace: breaker}
spec:
  selector: {app: nothing-has-this-label}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: gone, namespace: breaker}
spec:
  service: gone
  circuitBreaker: {consecutiveFailures: 1, openTimeout: 1h}
`

// flakyRetried is flaky's policy with retries, which the dashboards'
// retry panels need.
const flakyRetried = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: flaky, namespace: breaker}
spec:
  service: flaky
  retries: {attempts: 2}
  circuitBreaker: {consecutiveFailures: 3, openTimeout: 2s, halfOpenRequests: 1}
`

// observabilityInACluster: the real Prometheus, outside the cluster, finds
// the sidecars through the API server with the scrape job that
// docs/dashboards.md documents (taken from that page, not restated here);
// every dashboard query returns data; a breaker left open fires
// MinimeshCircuitBreakerOpen in Prometheus's own rule evaluation; and a
// call's span reaches the real Jaeger.
func observabilityInACluster(ctx context.Context, t *testing.T, c *cluster.Cluster, j *jaeger.Jaeger, a agent, b flakyBackend) {
	root, err := tools.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	p := startPrometheus(t, c, root)

	// Traces: the backend echoes the traceparent the sidecar sent.
	r := a.get(flakyURL+"/traced", false)
	var echoed struct {
		Headers map[string][]string `json:"headers"`
	}
	if err := json.Unmarshal([]byte(r.Body), &echoed); err != nil || r.Status != 200 {
		t.Fatalf("traced call: %d %q: %v\n%s", r.Status, r.Error, err, r.Body)
	}
	tp := strings.Split(strings.Join(echoed.Headers["Traceparent"], ""), "-")
	if len(tp) != 4 {
		t.Fatalf("the backend got no traceparent from the sidecar (proxy.traceSampleRatio=1): %v", echoed.Headers)
	}
	spans, err := j.WaitTrace(tp[1], 30*time.Second)
	if err != nil {
		t.Fatalf("trace %s in Jaeger: %v\njaeger:\n%s", tp[1], err, j.Output())
	}
	if ns, _ := spans[0].Process.Tag("k8s.namespace.name"); ns != "breaker" {
		t.Errorf("span %s of process %+v: k8s.namespace.name %q, want breaker", spans[0].OperationName, spans[0].Process, ns)
	}
	t.Logf("trace %s in Jaeger: span %q of service %q", tp[1], spans[0].OperationName, spans[0].Process.ServiceName)

	// Service discovery and relabelling: both sidecars of the namespace,
	// with the labels the dashboards join on.
	up, err := p.WaitFor(`up{job="minimesh-proxy", namespace="breaker"} == 1`,
		func(v prom.Vector) bool { return len(v) == 2 }, 60*time.Second)
	if err != nil {
		t.Fatalf("the two sidecars of namespace breaker, discovered and up: %v (%v)\nprometheus:\n%s", err, up, p.Output())
	}
	services := map[string]bool{}
	for _, s := range up {
		if s.Metric["pod"] == "" || !strings.HasPrefix(s.Metric["instance"], "198.18.240.") || !strings.HasSuffix(s.Metric["instance"], ":15020") {
			t.Errorf("target %v: want pod set and instance the pod's admin port", s.Metric)
		}
		services[s.Metric["service"]] = true
	}
	if !services["app"] || !services["flaky"] {
		t.Errorf("service labels %v, want app and flaky (from the pods' app label)", services)
	}

	// Traffic for the dashboards: successes, the backend's 503s retried, a
	// breaker opening and half-opening; and the breaker of gone, left open.
	if out, err := c.KubectlStdin(ctx, gone+"---\n"+flakyRetried, "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	waitConfig(t, a, `"openTimeout": "1h0m0s"`)
	waitConfig(t, a, `"attempts": 2`)
	if r := a.get("http://gone.breaker.svc.cluster.local/", false); r.Status != 502 {
		t.Fatalf("call to gone (no endpoints): %d %q, want 502 connect-failure", r.Status, r.Error)
	}
	if r := a.get("http://gone.breaker.svc.cluster.local/", false); r.Headers.Get("X-Minimesh-Error") != "circuit-open" {
		t.Fatalf("second call to gone: %d %q, want circuit-open", r.Status, r.Error)
	}
	for round := range 3 {
		b.fail(round == 1)
		t.Logf("load round %d (backend failing: %v): %s", round, round == 1, a.load(flakyURL+"/dash", 20, 4))
	}
	b.fail(false)

	// Every dashboard query returns data, with Grafana's default variable
	// values over the window of this traffic. The restart panels read
	// kube-state-metrics, which this cluster does not run (its module is not
	// served here); e2e/observability checks them against a stand-in.
	files, _ := filepath.Glob(filepath.Join(root, "charts", "minimesh", "dashboards", "*.json"))
	if len(files) == 0 {
		t.Fatal("no dashboards")
	}
	checked := 0
	for _, path := range files {
		d, _, err := grafana.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		vars := grafana.DefaultVars(d)
		vars["__rate_interval"], vars["__range"] = "1m", "5m"
		for _, q := range grafana.Queries(d) {
			if strings.Contains(q.Expr, "kube_pod_") {
				continue
			}
			expr, err := grafana.Substitute(q.Expr, vars)
			if err != nil {
				t.Errorf("%s %s: %v", filepath.Base(path), q.Where, err)
				continue
			}
			if _, err := p.WaitFor(expr, prom.NonEmpty, 20*time.Second); err != nil {
				t.Errorf("%s %s: no data: %v\n%s", filepath.Base(path), q.Where, err, expr)
			}
			checked++
		}
	}
	t.Logf("%d dashboard queries returned data", checked)

	// The alert, in Prometheus's rule evaluation.
	firing := `ALERTS{alertname="MinimeshCircuitBreakerOpen", alertstate="firing", namespace="breaker", service="app", destination="gone:80"}`
	if _, err := p.WaitFor(firing, prom.NonEmpty, 90*time.Second); err != nil {
		all, _ := p.Query("ALERTS")
		t.Fatalf("%s: %v\nALERTS: %v", firing, err, all)
	}
	t.Logf("MinimeshCircuitBreakerOpen fires for app -> gone:80")
}

// startPrometheus runs Prometheus on the host with the scrape job of
// docs/dashboards.md, discovering pods through the cluster's API server,
// and the chart's alert rules.
func startPrometheus(t *testing.T, c *cluster.Cluster, root string) *prom.Prometheus {
	t.Helper()
	job := documentedJob(t, filepath.Join(root, "docs", "dashboards.md"))
	sd, ok := job["kubernetes_sd_configs"].([]any)
	if !ok || len(sd) != 1 {
		t.Fatalf("the documented job has no single kubernetes_sd_configs entry: %v", job)
	}
	sd[0].(map[string]any)["kubeconfig_file"] = c.Kubeconfig

	// The chart's rules, with each `for` cut to 5s: the one change, so that
	// the test need not wait out five minutes of an open breaker.
	rules, err := os.ReadFile(filepath.Join(root, "charts", "minimesh", "alerts", "minimesh-alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rules = regexp.MustCompile(`(?m)^(\s+for:) \d+[smh]$`).ReplaceAll(rules, []byte("$1 5s"))
	rulesFile := filepath.Join(t.TempDir(), "minimesh-alerts.yaml")
	if err := os.WriteFile(rulesFile, rules, 0o644); err != nil {
		t.Fatal(err)
	}
	conf, err := json.Marshal(map[string]any{
		"global":         map[string]any{"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
		"rule_files":     []string{rulesFile},
		"scrape_configs": []any{job},
	})
	if err != nil {
		t.Fatal(err)
	}
	p, err := prom.StartYAML(conf, prom.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("prometheus's last output:\n%s", p.Output())
		}
		p.Stop()
	})
	return p
}

// documentedJob is the scrape job in docs/dashboards.md's yaml block.
func documentedJob(t *testing.T, path string) map[string]any {
	t.Helper()
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(- job_name: minimesh-proxy\n.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatalf("%s: no yaml block with the minimesh-proxy job", path)
	}
	var jobs []map[string]any
	if err := yaml.Unmarshal(m[1], &jobs); err != nil || len(jobs) != 1 {
		t.Fatalf("%s: the minimesh-proxy job: %v (%d jobs)", path, err, len(jobs))
	}
	return jobs[0]
}

// waitConfig waits until the app's sidecar's /debug/config has want.
func waitConfig(t *testing.T, a agent, want string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		r := a.get("http://127.0.0.1:15020/debug/config", true)
		if strings.Contains(r.Body, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar's /debug/config has no %s after 30 s:\n%s", want, r.Body)
		}
	}
}

type loadResult struct {
	Sent    int64   `json:"sent"`
	OK      int64   `json:"ok"`
	Errors  int64   `json:"errors"`
	Seconds float64 `json:"seconds"`
}

func (r loadResult) String() string {
	return fmt.Sprintf("%d sent, %d ok, %d errors in %.1fs", r.Sent, r.OK, r.Errors, r.Seconds)
}

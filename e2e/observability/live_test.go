package observability

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/grafana"
	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/prom"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestExpressionsEvaluate runs a real Prometheus (Debian's) that scrapes
// the real sidecar registry, with traffic flowing, and a stand-in for
// kube-state-metrics, and loads the alert rules. Every dashboard query
// must then evaluate without error and return data, and every alert
// expression must match the trouble the traffic makes: parsing alone
// misses a join that matches nothing or matches many-to-many.
func TestExpressionsEvaluate(t *testing.T) {
	promBin := proc.NeedTool(t, "prometheus")

	// The sidecar: nominatim fails half the time and its breaker is open,
	// 2 % of its requests take 2 s; auth is healthy. Its app serves
	// requests into the pod on 8000 (capture-inbound), one in four a 500.
	m := telemetry.New(0)
	m.WatchBreakers(func() []telemetry.BreakerState {
		return []telemetry.BreakerState{{Destination: "nominatim-service", State: "open"}, {Destination: "auth-service", State: "closed"}}
	})
	// auth has four pods, one of them ejected again and again.
	m.WatchEndpoints(func() []telemetry.EndpointCount {
		return []telemetry.EndpointCount{{Destination: "auth-service", State: "ready", N: 3}, {Destination: "auth-service", State: "terminating", N: 0}, {Destination: "auth-service", State: "ejected", N: 1}}
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		nom, auth, in := m.Destination("nominatim-service"), m.Destination("auth-service"), m.Inbound("8000")
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			nom.Observe("GET", 200, 0.02)
			nom.Observe("GET", 503, 0.0002)
			nom.Rejected()
			nom.Retry("503")
			auth.Observe("POST", 200, 0.005)
			in.Observe("GET", 200, 0.003)
			if i%4 == 0 {
				in.Observe("POST", 500, 0.001)
			}
			if i%25 == 0 {
				nom.Observe("GET", 200, 2)
				nom.Transition("open", "half-open")
				nom.Transition("half-open", "open")
				m.PolicyReload(i%50 == 0)
				auth.Ejected()
			}
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	sidecar := httptest.NewServer(m.Registry.Handler())
	t.Cleanup(sidecar.Close)

	// kube-state-metrics: the native sidecar restarts at every scrape.
	var restarts atomic.Int64
	ksm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n := restarts.Add(1)
		fmt.Fprintf(w, "# TYPE kube_pod_init_container_status_restarts_total counter\n"+
			"kube_pod_init_container_status_restarts_total{namespace=\"bakery\",pod=\"tenant-1\",uid=\"u1\",container=\"minimesh-proxy\"} %d\n"+
			"# TYPE kube_pod_container_status_restarts_total counter\n"+
			"kube_pod_container_status_restarts_total{namespace=\"bakery\",pod=\"tenant-1\",uid=\"u1\",container=\"tenant\"} 0\n", n)
	}))
	t.Cleanup(ksm.Close)

	rules, err := filepath.Abs(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: minimesh-proxy
    static_configs:
      - targets: [%q]
        labels: {namespace: bakery, pod: tenant-1, service: tenant}
  - job_name: kube-state-metrics
    honor_labels: true
    static_configs:
      - targets: [%q]
`, rules, hostPort(t, sidecar.URL), hostPort(t, ksm.URL))
	// prom.StartYAML picks the port and starts again when another
	// process took it first (a port free a moment ago is no promise: CI
	// once lost this test to "address already in use").
	pr, err := prom.StartYAML([]byte(config), prom.Options{Path: promBin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("prometheus log:\n%s", pr.Output())
		}
		pr.Stop()
	})
	api := pr.URL

	// Wait for 12 scrapes of both targets: enough for the 10s windows below.
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := query(api, `min(count_over_time(up[1m])) >= 12`)
		if err == nil && len(res) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus did not scrape 12 times in 60s (last: %v)", err)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Grafana's $__rate_interval is 4 scrape intervals; $__range the
	// window the test has data for.
	live := map[string]string{"__rate_interval": "10s", "__range": "1m"}
	files, _ := filepath.Glob(filepath.Join(dashboardsDir, "*.json"))
	for _, path := range files {
		d, _ := loadDashboard(t, path)
		vars := dashboardVars(d)
		for k, v := range live {
			vars[k] = v
		}
		for _, q := range grafana.Queries(d) {
			expr, err := substitute(q.Expr, vars)
			if err != nil {
				t.Errorf("%s %s: %v", filepath.Base(path), q.Where, err)
				continue
			}
			res, err := query(api, expr)
			switch {
			case err != nil:
				t.Errorf("%s %s: %v\n%s", filepath.Base(path), q.Where, err, expr)
			case len(res) == 0:
				t.Errorf("%s %s: no data\n%s", filepath.Base(path), q.Where, expr)
			}
		}
	}

	// Each alert's condition holds for the traffic above.
	var rf ruleFile
	decodeStrict(t, alertsFile, &rf)
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			res, err := query(api, r.Expr)
			switch {
			case err != nil:
				t.Errorf("alert %s: %v", r.Alert, err)
			case len(res) == 0:
				t.Errorf("alert %s: expression matches nothing, though the traffic should trigger it", r.Alert)
			default:
				t.Logf("alert %s: %d series, e.g. %s", r.Alert, len(res), res[0])
			}
		}
	}

	// And Prometheus itself evaluated the loaded rules without error.
	var rulesResp struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name, Health, LastError string
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := getJSON(api+"/api/v1/rules", &rulesResp); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rulesResp.Data.Groups {
		for _, r := range g.Rules {
			n++
			if r.Health != "ok" {
				t.Errorf("rule %s: health %q, last error %q", r.Name, r.Health, r.LastError)
			}
		}
	}
	if n != len(wantAlerts) {
		t.Errorf("prometheus loaded %d rules, want %d", n, len(wantAlerts))
	}
}

// query runs an instant query and returns the result's series (or the
// scalar) as JSON strings.
func query(api, expr string) ([]string, error) {
	var resp struct {
		Status    string `json:"status"`
		Error     string `json:"error"`
		ErrorType string `json:"errorType"`
		Data      struct {
			ResultType string            `json:"resultType"`
			Result     []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := getJSON(api+"/api/v1/query?query="+url.QueryEscape(expr), &resp); err != nil {
		return nil, err
	}
	if resp.Status != "success" {
		return nil, fmt.Errorf("%s: %s", resp.ErrorType, resp.Error)
	}
	var out []string
	for _, r := range resp.Data.Result {
		out = append(out, string(r))
	}
	return out, nil
}

func getJSON(u string, v any) error {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%s: %d %s: %w", u, resp.StatusCode, body, err)
	}
	return nil
}

func hostPort(t *testing.T, rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

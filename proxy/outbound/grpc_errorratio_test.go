package outbound_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The rules and dashboards the chart ships, from this package's directory.
const (
	shippedAlerts     = "../../charts/minimesh/alerts/minimesh-alerts.yaml"
	shippedDashboards = "../../charts/minimesh/dashboards"
)

// TestGRPCFailureCountedOnce: a gRPC call that fails counts once in the
// error ratio of MinimeshHighErrorRate and of the dashboards, wherever it
// fails (the upstream's status in its trailers or a trailers-only answer,
// the upstream's reset before the headers, after a message or in the
// middle of one, the policy's timeout before or after the headers, the
// breaker open). Each case sends as many good calls as failed ones; the
// sidecar's counters, fed to promtool at one call per second and series,
// must make the shipped expressions read exactly 50 %. Before, a call cut
// after its headers was both a 502/504 in minimesh_requests_total and
// UNAVAILABLE/DEADLINE_EXCEEDED/INTERNAL in minimesh_grpc_requests_total:
// one failed call of two read 100 %.
func TestGRPCFailureCountedOnce(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("needs promtool (scripts/tools.sh): %v", err)
		}
		t.Skip("needs promtool")
	}
	exprs := shippedErrorRatios(t)

	trailers := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(wholeMessage)
		w.Header().Set("Grpc-Status", "14")
	}
	trailersOnly := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "14")
		w.WriteHeader(http.StatusOK)
	}
	resetFirst := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		panic(http.ErrAbortHandler)
	}
	const timeout = "timeout: 200ms\n"
	for _, tc := range []struct {
		name   string
		policy string
		fail   http.HandlerFunc
		open   bool   // the second failed call meets the open breaker
		code   string // minimesh_grpc_requests_total's code of the failed calls
	}{
		{"UNAVAILABLE in the upstream's trailers", "", trailers, false, "UNAVAILABLE"},
		{"the upstream's trailers-only UNAVAILABLE", "", trailersOnly, false, "UNAVAILABLE"},
		{"upstream reset before the headers", "", resetFirst, false, "UNAVAILABLE"},
		{"upstream reset after a message", "", answerThen(wholeMessage, "reset"), false, "UNAVAILABLE"},
		{"upstream reset in the middle of a message", "", answerThen(halfMessage, "reset"), false, "INTERNAL"},
		{"policy timeout before the headers", timeout, hangCall, false, "DEADLINE_EXCEEDED"},
		{"policy timeout after a message", timeout, answerThen(wholeMessage, "hang"), false, "DEADLINE_EXCEEDED"},
		{"breaker open", "circuitBreaker:\n  consecutiveFailures: 1\n  openTimeout: 60s\n", resetFirst, true, "UNAVAILABLE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startH2CUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/ok" {
					_, _ = io.Copy(io.Discard, r.Body)
					w.Header().Set("Content-Type", "application/grpc")
					w.Header().Set("Trailer", "Grpc-Status")
					_, _ = w.Write(wholeMessage)
					w.Header().Set("Grpc-Status", "0")
					return
				}
				tc.fail(w, r)
			})
			sc := startSidecar(t, policyDoc("health", healthSvc, tc.policy), resolve(up, healthSvc))
			c := h2cClient(t)
			call := func(path string) {
				req, err := http.NewRequest(http.MethodPost, "http://"+sc.Addr+path, strings.NewReader("\x00\x00\x00\x00\x00"))
				if err != nil {
					t.Fatal(err)
				}
				req.Host = healthSvc
				req.Header.Set("Content-Type", "application/grpc")
				req.Header.Set("Te", "trailers")
				resp, err := c.Transport.RoundTrip(req)
				if err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				_, _ = io.Copy(io.Discard, resp.Body) // a reset in the middle of a message fails the read: a failed call
				resp.Body.Close()
			}
			call("/ok")
			call("/ok")
			call("/fail")
			if tc.open {
				sc.waitBreakerState(healthSvc, "open", 2*time.Second)
			}
			call("/fail")
			sc.waitMetric(2, 5*time.Second, "minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", tc.code)
			sc.waitMetric(4, 5*time.Second, "minimesh_requests_total", "destination", healthSvc)
			if tc.open {
				if got := sc.metric("minimesh_circuit_breaker_rejected_total", "destination", healthSvc); got != 1 {
					t.Fatalf("minimesh_circuit_breaker_rejected_total = %v, want the second failed call refused", got)
				}
			}
			runErrorRatios(t, promtool, sc.metrics(), exprs)
		})
	}
}

// errorRatio is one shipped expression that counts failed requests, and
// what it reads for the test's traffic (two good calls and two failed
// ones a second): want the failed share (a ratio), else failed calls per
// second.
type errorRatio struct {
	where, expr string
	want        float64
}

// shippedErrorRatios reads MinimeshHighErrorRate, with its threshold at 0
// so that it keeps every series, and the dashboards' queries that add the
// gRPC failures to the 5xx.
func shippedErrorRatios(t *testing.T) []errorRatio {
	t.Helper()
	raw, err := os.ReadFile(shippedAlerts)
	if err != nil {
		t.Fatal(err)
	}
	var rf struct {
		Groups []struct {
			Rules []struct {
				Alert, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(raw, &rf); err != nil {
		t.Fatalf("%s: %v", shippedAlerts, err)
	}
	var out []errorRatio
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert != "MinimeshHighErrorRate" {
				continue
			}
			if strings.Count(r.Expr, "> 0.05") != 1 {
				t.Fatalf("MinimeshHighErrorRate's threshold is no longer `> 0.05`: %s", r.Expr)
			}
			out = append(out, errorRatio{"alert MinimeshHighErrorRate", strings.Replace(r.Expr, "> 0.05", ">= 0", 1), 0.5})
		}
	}
	if len(out) != 1 {
		t.Fatalf("%s: %d MinimeshHighErrorRate rules, want 1", shippedAlerts, len(out))
	}
	vars := strings.NewReplacer("$namespace", ".*", "$service", ".*", "$destination", ".*", "$__rate_interval", "2m")
	files, err := filepath.Glob(filepath.Join(shippedDashboards, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in %s (%v)", shippedDashboards, err)
	}
	n := 0
	for _, path := range files {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var d any
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		for i, e := range exprsOf(d) {
			if !strings.Contains(e, `code=~"5.."`) || !strings.Contains(e, "minimesh_grpc_requests_total") {
				continue
			}
			want := 2.0 // failed calls per second
			if strings.Contains(e, "/") {
				want = 0.5
			}
			out = append(out, errorRatio{fmt.Sprintf("%s expr %d", filepath.Base(path), i), vars.Replace(e), want})
			n++
		}
	}
	if n == 0 {
		t.Fatal("no dashboard query adds gRPC failures to the 5xx: update this test")
	}
	return out
}

// exprsOf collects every "expr" of a dashboard, in order.
func exprsOf(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if s, ok := v[k].(string); ok && k == "expr" {
				out = append(out, s)
				continue
			}
			out = append(out, exprsOf(v[k])...)
		}
	case []any:
		for _, e := range v {
			out = append(out, exprsOf(e)...)
		}
	}
	return out
}

// runErrorRatios feeds the sidecar's request counters to promtool, each
// series growing by its value every second (as if the test's calls came
// again each second), with the labels a scrape adds, and checks what each
// expression reads.
func runErrorRatios(t *testing.T, promtool string, ms metricSet, exprs []errorRatio) {
	t.Helper()
	var b strings.Builder
	b.WriteString("tests:\n  - interval: 1m\n    input_series:\n")
	for _, s := range ms {
		if s.Name != "minimesh_requests_total" && s.Name != "minimesh_grpc_requests_total" || s.Labels["destination"] != healthSvc {
			continue
		}
		labels := map[string]string{"job": "minimesh-proxy", "namespace": "bakery", "service": "tenant", "pod": "tenant-1"}
		for k, v := range s.Labels {
			labels[k] = v
		}
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s=%q", k, labels[k])
		}
		series := s.Name + "{" + strings.Join(parts, ",") + "}"
		fmt.Fprintf(&b, "      - series: %s\n        values: '0+%gx20'\n", yamlString(series), 60*s.Value)
	}
	b.WriteString("    promql_expr_test:\n")
	for _, e := range exprs {
		// Rounded: the rates' extrapolation leaves a last bit of float
		// error, which promtool's comparison would not forgive.
		fmt.Fprintf(&b, "      - expr: %s\n        eval_time: 10m\n        exp_samples:\n          - labels: '{}'\n            value: %g\n",
			yamlString("round(sum("+e.expr+") * 1e6) / 1e6"), e.want)
	}
	path := filepath.Join(t.TempDir(), "ratios_test.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "test", "rules", path).CombinedOutput()
	if err != nil {
		var which []string
		for i, e := range exprs {
			which = append(which, fmt.Sprintf("#%d %s (want %g)", i, e.where, e.want))
		}
		t.Errorf("promtool test rules: %v\n%s\nexpressions: %s\ninput:\n%s", err, out, strings.Join(which, "; "), b.String())
	}
}

// yamlString quotes s for YAML (JSON strings are YAML strings).
func yamlString(s string) string {
	q, _ := json.Marshal(s)
	return string(q)
}

package prom

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func TestConfigYAML(t *testing.T) {
	b, err := ConfigYAML(Config{Interval: 1500 * time.Millisecond, Targets: []Target{{Addr: "127.0.0.1:9", Labels: map[string]string{"pod": "p"}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"job_name": "minimesh-proxy"`, `"honor_labels": true`, `"127.0.0.1:9"`, `"pod": "p"`, `"scrape_interval": "1500ms"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config lacks %s:\n%s", want, b)
		}
	}
	if _, err := ConfigYAML(Config{}); err == nil {
		t.Error("ConfigYAML without targets: no error")
	}
}

// TestScrapeAndQuery runs Prometheus against a registry served by the test
// and reads the series back with the target's static labels.
func TestScrapeAndQuery(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "harness_events_total", Help: "Events."}, []string{"kind"})
	reg.MustRegister(c)
	c.WithLabelValues("a").Add(3)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)

	p := StartT(t, Config{Targets: []Target{{
		Addr:   strings.TrimPrefix(srv.URL, "http://"),
		Labels: map[string]string{"namespace": "bakery-ia", "pod": "tenant-abc"},
	}}})
	if !strings.HasPrefix(p.URL, "http://127.0.0.1:") {
		t.Errorf("URL %s is not on loopback", p.URL)
	}
	if err := p.WaitScraped(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	v, err := p.WaitFor(`harness_events_total{namespace="bakery-ia", pod="tenant-abc", job="minimesh-proxy"}`, NonEmpty, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(v) != 1 || v[0].Value != 3 || v[0].Metric["kind"] != "a" {
		t.Errorf("result %v, want one sample of 3 with kind=a", v)
	}
	if s := v[0].String(); !strings.Contains(s, `kind="a"`) || !strings.HasPrefix(s, "harness_events_total{") {
		t.Errorf("Sample.String() = %s", s)
	}

	if v, err := p.Query("1 + 1"); err != nil || len(v) != 1 || v[0].Value != 2 {
		t.Errorf("scalar query: %v, %v", v, err)
	}
	if v, err := p.Query(`harness_events_total[10s]`); err != nil || len(v) != 1 {
		t.Errorf("range query: %v, %v", v, err)
	}
	start := time.Now()
	_, err = p.WaitFor("sum(", NonEmpty, 10*time.Second)
	var qe *QueryError
	if !errors.As(err, &qe) || time.Since(start) > 5*time.Second {
		t.Errorf("WaitFor(bad expr) = %v after %v, want a QueryError at once", err, time.Since(start))
	}
	if _, err := p.WaitFor("absent_metric_xyz", NonEmpty, 500*time.Millisecond); err == nil {
		t.Error("WaitFor(absent) did not time out")
	}
}

func TestCheckMetrics(t *testing.T) {
	path := proc.NeedTool(t, "promtool")
	out, err := CheckMetrics(path, []byte("# HELP good_total Good.\n# TYPE good_total counter\ngood_total 1\n"))
	if err != nil || out != "" {
		t.Errorf("clean exposition: %q, %v", out, err)
	}
	out, err = CheckMetrics(path, []byte("# TYPE bad counter\nbad 1\n"))
	if err != nil || out == "" {
		t.Errorf("counter without _total and help: %q, %v; want complaints", out, err)
	}
}

// Package prom runs a real Prometheus (Debian's prometheus package) for the
// end-to-end tests: it scrapes static targets (the sidecars' admin ports)
// and answers PromQL through its HTTP API. Everything listens on loopback.
package prom

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/internal/freeport"
)

// Target is one scrape target.
type Target struct {
	// Addr is host:port of the target (a sidecar's admin address).
	Addr string
	// Labels are added to every series of the target, standing in for
	// what Kubernetes service discovery would add (namespace, pod,
	// service).
	Labels map[string]string
}

// Config is what Prometheus scrapes.
type Config struct {
	// Job is the job label (default "minimesh-proxy", the dashboards'
	// $job).
	Job string
	// MetricsPath defaults to /metrics.
	MetricsPath string
	// Interval is the scrape interval and timeout (default 1 s).
	Interval time.Duration
	Targets  []Target
}

// Options are the optional parts of Start.
type Options struct {
	// Path of the prometheus binary; empty: tools.Find("prometheus").
	Path string
	// StartTimeout bounds the wait for /-/ready (default 30 s).
	StartTimeout time.Duration
}

// Prometheus is a running Prometheus.
type Prometheus struct {
	// URL is the base URL of the web UI and the HTTP API.
	URL string
	Job string

	proc   *proc.Proc
	dir    string
	client *http.Client
}

// ConfigYAML renders the Prometheus configuration of cfg (JSON is YAML).
func ConfigYAML(cfg Config) ([]byte, error) {
	if cfg.Job == "" {
		cfg.Job = "minimesh-proxy"
	}
	if cfg.MetricsPath == "" {
		cfg.MetricsPath = "/metrics"
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if len(cfg.Targets) == 0 {
		return nil, errors.New("prometheus config: no targets")
	}
	type staticConfig struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels,omitempty"`
	}
	statics := make([]staticConfig, 0, len(cfg.Targets))
	for _, tg := range cfg.Targets {
		statics = append(statics, staticConfig{Targets: []string{tg.Addr}, Labels: tg.Labels})
	}
	iv := model(cfg.Interval)
	doc := map[string]any{
		"global": map[string]any{
			"scrape_interval":     iv,
			"scrape_timeout":      iv,
			"evaluation_interval": iv,
		},
		"scrape_configs": []any{map[string]any{
			"job_name":       cfg.Job,
			"metrics_path":   cfg.MetricsPath,
			"honor_labels":   true,
			"static_configs": statics,
		}},
	}
	return json.MarshalIndent(doc, "", "  ")
}

// model writes d as a Prometheus duration (whole milliseconds).
func model(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return strconv.FormatInt(max(1, d.Milliseconds()), 10) + "ms"
}

// Start writes the configuration, starts Prometheus on a free loopback
// port with its storage in a temporary directory and waits for /-/ready.
func Start(cfg Config, opt Options) (*Prometheus, error) {
	conf, err := ConfigYAML(cfg)
	if err != nil {
		return nil, err
	}
	p, err := StartYAML(conf, opt)
	if err != nil {
		return nil, err
	}
	p.Job = cmpOr(cfg.Job, "minimesh-proxy")
	return p, nil
}

// StartYAML starts Prometheus with a configuration of the caller's own,
// such as Kubernetes service discovery (which Config does not describe).
func StartYAML(conf []byte, opt Options) (*Prometheus, error) {
	if opt.Path == "" {
		p, err := tools.Find("prometheus")
		if err != nil {
			return nil, err
		}
		opt.Path = p
	}
	if opt.StartTimeout <= 0 {
		opt.StartTimeout = 30 * time.Second
	}
	var err error
	for range 3 {
		var p *Prometheus
		if p, err = start(conf, opt); err == nil || !freeport.Taken(err) {
			return p, err
		}
	}
	return nil, err
}

func cmpOr(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func start(conf []byte, opt Options) (*Prometheus, error) {
	addr, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "minimesh-prometheus-")
	if err != nil {
		return nil, err
	}
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, conf, 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p, err := proc.Start("prometheus", opt.Path, []string{
		"--config.file=" + cfgFile,
		"--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + addr,
		"--log.level=warn",
	}, proc.Options{Dir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	pr := &Prometheus{URL: "http://" + addr, proc: p, dir: dir, client: &http.Client{Timeout: 10 * time.Second}}
	if err := p.WaitReady(opt.StartTimeout, pr.ready); err != nil {
		pr.Stop()
		return nil, err
	}
	return pr, nil
}

// StartT starts Prometheus for a test and stops it in t.Cleanup. Without
// the prometheus binary the test is skipped (failed under CI=true).
func StartT(t testing.TB, cfg Config) *Prometheus {
	t.Helper()
	path := proc.NeedTool(t, "prometheus")
	p, err := Start(cfg, Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out := p.Output(); t.Failed() && out != "" {
			t.Logf("prometheus's last output:\n%s", out)
		}
		p.Stop()
	})
	return p
}

func (p *Prometheus) ready() error {
	resp, err := p.client.Get(p.URL + "/-/ready")
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /-/ready: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// Stop ends Prometheus and removes its configuration and storage.
func (p *Prometheus) Stop() {
	p.proc.Stop()
	os.RemoveAll(p.dir)
}

// Output is Prometheus's last log output.
func (p *Prometheus) Output() string { return p.proc.Output() }

// Sample is one element of an instant vector.
type Sample struct {
	Metric map[string]string
	Value  float64
	Time   time.Time
}

func (s Sample) String() string {
	var labels []string
	for _, k := range slices.Sorted(maps.Keys(s.Metric)) {
		if k != "__name__" {
			labels = append(labels, fmt.Sprintf("%s=%q", k, s.Metric[k]))
		}
	}
	return fmt.Sprintf("%s{%s} %g", s.Metric["__name__"], strings.Join(labels, ", "), s.Value)
}

// Vector is the result of an instant query. A scalar result is a Vector of
// one Sample without labels; a range-vector result holds the last value of
// each series.
type Vector []Sample

// QueryError is an error that Prometheus returned for a query (a bad
// expression, for instance), as opposed to failing to ask.
type QueryError struct {
	Expr, Type, Msg string
}

func (e *QueryError) Error() string {
	return fmt.Sprintf("query %q: %s: %s", e.Expr, e.Type, e.Msg)
}

type apiResponse struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Data      json.RawMessage `json:"data"`
	Warnings  []string        `json:"warnings"`
}

type queryData struct {
	ResultType string          `json:"resultType"`
	Result     json.RawMessage `json:"result"`
}

// Query evaluates expr now (GET /api/v1/query).
func (p *Prometheus) Query(expr string) (Vector, error) {
	return p.QueryContext(context.Background(), expr)
}

// QueryContext is Query with a context.
func (p *Prometheus) QueryContext(ctx context.Context, expr string) (Vector, error) {
	var d queryData
	if err := p.get(ctx, "/api/v1/query", url.Values{"query": {expr}}, expr, &d); err != nil {
		return nil, err
	}
	return parseResult(d)
}

func (p *Prometheus) get(ctx context.Context, path string, q url.Values, expr string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+path+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var ar apiResponse
	if err := json.Unmarshal(body, &ar); err != nil {
		return fmt.Errorf("GET %s: %s: %.200s", path, resp.Status, body)
	}
	if ar.Status != "success" {
		return &QueryError{Expr: expr, Type: ar.ErrorType, Msg: ar.Error}
	}
	return json.Unmarshal(ar.Data, out)
}

func parseResult(d queryData) (Vector, error) {
	switch d.ResultType {
	case "vector":
		var rs []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(d.Result, &rs); err != nil {
			return nil, err
		}
		v := make(Vector, 0, len(rs))
		for _, r := range rs {
			s, err := sample(r.Metric, r.Value)
			if err != nil {
				return nil, err
			}
			v = append(v, s)
		}
		return v, nil
	case "scalar":
		var r [2]any
		if err := json.Unmarshal(d.Result, &r); err != nil {
			return nil, err
		}
		s, err := sample(map[string]string{}, r)
		if err != nil {
			return nil, err
		}
		return Vector{s}, nil
	case "matrix":
		var rs []struct {
			Metric map[string]string `json:"metric"`
			Values [][2]any          `json:"values"`
		}
		if err := json.Unmarshal(d.Result, &rs); err != nil {
			return nil, err
		}
		v := make(Vector, 0, len(rs))
		for _, r := range rs {
			if len(r.Values) == 0 {
				continue
			}
			s, err := sample(r.Metric, r.Values[len(r.Values)-1])
			if err != nil {
				return nil, err
			}
			v = append(v, s)
		}
		return v, nil
	default:
		return nil, fmt.Errorf("query result of type %q", d.ResultType)
	}
}

// sample decodes [unix seconds, "value"].
func sample(metric map[string]string, v [2]any) (Sample, error) {
	ts, ok := v[0].(float64)
	str, ok2 := v[1].(string)
	if !ok || !ok2 {
		return Sample{}, fmt.Errorf("malformed sample %v", v)
	}
	f, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return Sample{}, fmt.Errorf("sample value %q: %w", str, err)
	}
	sec, frac := math.Modf(ts)
	return Sample{Metric: metric, Value: f, Time: time.Unix(int64(sec), int64(frac*1e9))}, nil
}

// WaitFor evaluates expr every 250 ms until ok accepts the result, for at
// most timeout, and returns the last result. A query error (a bad
// expression) ends the wait at once.
func (p *Prometheus) WaitFor(expr string, ok func(Vector) bool, timeout time.Duration) (Vector, error) {
	deadline := time.Now().Add(timeout)
	for {
		v, err := p.Query(expr)
		if err == nil && ok(v) {
			return v, nil
		}
		var qe *QueryError
		if errors.As(err, &qe) {
			return v, err
		}
		if aerr := p.proc.Alive(); aerr != nil {
			return v, aerr
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("query %q: result %v not the one wanted after %v", expr, v, timeout)
			}
			return v, err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// NonEmpty accepts a result with at least one sample.
func NonEmpty(v Vector) bool { return len(v) > 0 }

// WaitScraped waits until every target of the job is up (up == 1).
func (p *Prometheus) WaitScraped(timeout time.Duration) error {
	expr := fmt.Sprintf(`min(up{job=%q})`, p.Job)
	_, err := p.WaitFor(expr, func(v Vector) bool { return len(v) == 1 && v[0].Value == 1 }, timeout)
	return err
}

// CheckMetrics runs `promtool check metrics` on an exposition (what a
// /metrics endpoint serves) and returns its complaints; empty when there
// are none. promtoolPath empty: tools.Find("promtool").
func CheckMetrics(promtoolPath string, exposition []byte) (string, error) {
	if promtoolPath == "" {
		p, err := tools.Find("promtool")
		if err != nil {
			return "", err
		}
		promtoolPath = p
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtoolPath, "check", "metrics")
	cmd.Stdin = bytes.NewReader(exposition)
	out, err := cmd.CombinedOutput()
	text := strings.TrimSpace(string(out))
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return text, err
	}
	// promtool exits 1 with lint problems, 3 when it cannot parse.
	if err != nil && text == "" {
		return "", fmt.Errorf("promtool check metrics: %w", err)
	}
	return text, nil
}

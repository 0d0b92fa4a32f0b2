package sidecar_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

const geo = "geo-service:8000"

// upstream is a loopback HTTP server whose behaviour the test switches:
// Hits, Delay and Arrived (see proxytest.Upstream), and status.
type upstream struct {
	*proxytest.Upstream
	status atomic.Int64 // answered status; 0 is 200
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.Upstream = proxytest.NewUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		w.Header().Set("X-Seen-Request-ID", r.Header.Get("X-Request-ID"))
		code := int(u.status.Load())
		if code == 0 {
			code = 200
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, "hello from geo\n")
	})
	return u
}

// syncBuffer collects the sidecar's log for the test's failure output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type running struct {
	sc     *sidecar.Sidecar
	cancel context.CancelFunc
	done   chan error
	client *http.Client // sends through the sidecar
	admin  string       // http://127.0.0.1:port
	log    *syncBuffer
}

// start runs a sidecar until the test ends, and waits until it is ready.
func start(t *testing.T, cfg sidecar.Config) *running {
	t.Helper()
	cfg.OutboundAddr = "127.0.0.1:0"
	cfg.AdminAddr = "127.0.0.1:0"
	if cfg.Server == "" {
		cfg.Server = proxytest.Server()
	}
	cfg.StdTransport = cfg.StdTransport || proxytest.StdTransport()
	logs := &syncBuffer{}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sc, err := sidecar.Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{sc: sc, cancel: cancel, done: make(chan error, 1), admin: "http://" + sc.AdminAddr(), log: logs}
	go func() { r.done <- sc.Serve(ctx) }()
	proxy := &url.URL{Scheme: "http", Host: sc.OutboundAddr()}
	tr := &http.Transport{Proxy: http.ProxyURL(proxy)}
	r.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(15 * time.Second):
			t.Error("Serve did not return")
		}
		tr.CloseIdleConnections()
		if t.Failed() {
			t.Logf("sidecar log:\n%s", logs.String())
		}
	})
	if err := proxytest.WaitReady(sc.AdminAddr(), 5*time.Second); err != nil {
		t.Fatalf("sidecar %v; log:\n%s", err, logs.String())
	}
	return r
}

var adminClient = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}

func (r *running) adminGet(t *testing.T, path string) (int, string) {
	t.Helper()
	return proxytest.Get(r.admin + path)
}

func (r *running) adminPost(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := adminClient.Post(r.admin+path, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// get sends GET http://geo-service:8000/ through the sidecar. A
// circuit-open answer is checked against DESIGN.md on the way.
func (r *running) get(t *testing.T) *http.Response {
	t.Helper()
	resp, err := r.client.Get("http://" + geo + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("X-Minimesh-Error") == "circuit-open" {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
			t.Errorf("circuit-open Retry-After %q, want 1..60 seconds", resp.Header.Get("Retry-After"))
		}
		if !json.Valid(body) || !strings.Contains(string(body), geo) {
			t.Errorf("circuit-open body does not name %s in JSON: %s", geo, body)
		}
	}
	return resp
}

// failuresToOpen sends failing requests until the breaker answers
// circuit-open, and returns how many reached the upstream.
func (r *running) failuresToOpen(t *testing.T, u *upstream, limit int) int {
	t.Helper()
	u.status.Store(500)
	before := u.Hits.Load()
	for i := 0; i < limit; i++ {
		resp := r.get(t)
		if resp.Header.Get("X-Minimesh-Error") == "circuit-open" {
			if resp.StatusCode != 503 {
				t.Errorf("circuit-open answer has status %d, want 503", resp.StatusCode)
			}
			return int(u.Hits.Load() - before)
		}
		if resp.StatusCode != 500 {
			t.Fatalf("failing upstream: got %d, want its 500 passed through", resp.StatusCode)
		}
	}
	t.Fatalf("breaker did not open within %d failures", limit)
	return 0
}

type debugConfig struct {
	Dir       string `json:"dir"`
	LastError string `json:"lastError"`
	Loads     int    `json:"loads"`
	Policies  []struct {
		Metadata struct{ Name string } `json:"metadata"`
		Spec     struct {
			Service        string `json:"service"`
			CircuitBreaker struct {
				ConsecutiveFailures int `json:"consecutiveFailures"`
			} `json:"circuitBreaker"`
		} `json:"spec"`
		Source string `json:"source"`
	} `json:"policies"`
}

func (r *running) config(t *testing.T) debugConfig {
	t.Helper()
	code, body := r.adminGet(t, "/debug/config")
	if code != 200 {
		t.Fatalf("/debug/config: %d %s", code, body)
	}
	var c debugConfig
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatalf("/debug/config: %v\n%s", err, body)
	}
	return c
}

func (c debugConfig) failures(service string) int {
	for _, p := range c.Policies {
		if p.Spec.Service == service {
			return p.Spec.CircuitBreaker.ConsecutiveFailures
		}
	}
	return -1
}

// reload writes a policy file and polls /debug/config until ok. The
// watcher loads the directory first and watches it after (see
// policywatch's TestChangeDuringFirstApply), so a write right after the
// start could go unseen until the 10 s resync: the same content is
// written again every second until the reload shows.
func (r *running) reload(t *testing.T, file, content, what string, ok func(debugConfig) bool) debugConfig {
	t.Helper()
	rewrite := time.Now()
	var c debugConfig
	if !proxytest.Poll(4*time.Second, 20*time.Millisecond, func() bool {
		if !time.Now().Before(rewrite) {
			proxytest.ReplaceFile(t, file, content)
			rewrite = time.Now().Add(time.Second)
		}
		c = r.config(t)
		return ok(c)
	}) {
		t.Fatalf("/debug/config never showed %s: %+v", what, c)
	}
	return c
}

func (r *running) metrics(t *testing.T) proxytest.Metrics {
	t.Helper()
	ms, err := proxytest.ScrapeMetrics(r.sc.AdminAddr())
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func policyDir(t *testing.T, content string) (dir, file string) {
	dir = t.TempDir()
	file = filepath.Join(dir, "geo.yaml")
	proxytest.ReplaceFile(t, file, content)
	return dir, file
}

func TestHotReload(t *testing.T) {
	u := newUpstream(t)
	dir, file := policyDir(t, proxytest.GeoPolicy(5))
	r := start(t, sidecar.Config{PolicyDir: dir, Resolve: map[string]string{geo: u.Host()}})

	c := r.config(t)
	if c.Dir != dir || c.failures("geo-service") != 5 || c.LastError != "" {
		t.Fatalf("/debug/config at start: %+v", c)
	}
	if resp := r.get(t); resp.StatusCode != 200 {
		t.Fatalf("healthy upstream: %d", resp.StatusCode)
	}

	// Reload to 2: two failures open the breaker.
	r.reload(t, file, proxytest.GeoPolicy(2), "consecutiveFailures 2", func(c debugConfig) bool { return c.failures("geo-service") == 2 })
	if n := r.failuresToOpen(t, u, 10); n != 2 {
		t.Fatalf("breaker opened after %d failures, want 2 (the reloaded policy)", n)
	}

	// A broken file: the error with file:line:col, counted, and the last
	// good policy still serving.
	c = r.reload(t, file, proxytest.BrokenPolicy, "a lastError", func(c debugConfig) bool { return c.LastError != "" })
	if want := regexp.QuoteMeta(file) + `:7:26: `; !regexp.MustCompile(want).MatchString(c.LastError) {
		t.Errorf("lastError %q does not name %s:7:26", c.LastError, file)
	}
	if c.failures("geo-service") != 2 {
		t.Errorf("/debug/config after the broken file shows consecutiveFailures %d, want the last good 2", c.failures("geo-service"))
	}
	ms := r.metrics(t)
	if v, ok := ms.Value("minimesh_policy_reloads_total", "result", "error"); !ok || v != 1 {
		t.Errorf(`minimesh_policy_reloads_total{result="error"} = %v (present %v), want 1`, v, ok)
	}
	if v, ok := ms.Value("minimesh_policy_reloads_total", "result", "success"); !ok || v != 2 {
		t.Errorf(`minimesh_policy_reloads_total{result="success"} = %v (present %v), want 2`, v, ok)
	}
	// The breaker is still open: the reload did not close it.
	if resp := r.get(t); resp.Header.Get("X-Minimesh-Error") != "circuit-open" {
		t.Errorf("after a failed reload the open breaker answered %d %q", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"))
	}
	if code, body := r.adminPost(t, "/debug/breakers/reset?destination="+geo); code != 200 {
		t.Fatalf("reset: %d %s", code, body)
	}
	if n := r.failuresToOpen(t, u, 10); n != 2 {
		t.Fatalf("after a broken reload the breaker opened after %d failures, want 2 (last good policy)", n)
	}

	// Fixed: the error clears.
	c = r.reload(t, file, proxytest.GeoPolicy(3), "consecutiveFailures 3", func(c debugConfig) bool { return c.failures("geo-service") == 3 })
	if c.LastError != "" {
		t.Errorf("lastError after a good reload: %q", c.LastError)
	}
}

type breakersDoc struct {
	Destinations []struct {
		Destination string             `json:"destination"`
		Policy      string             `json:"policy"`
		State       string             `json:"state"`
		Counts      *map[string]uint32 `json:"counts"`
		OpenUntil   *time.Time         `json:"openUntil"`
		Because     string             `json:"openedBecause"`
	} `json:"destinations"`
}

func TestDebugBreakersAndReset(t *testing.T) {
	u := newUpstream(t)
	dir, _ := policyDir(t, proxytest.GeoPolicy(2))
	r := start(t, sidecar.Config{PolicyDir: dir, Resolve: map[string]string{geo: u.Host()}})

	// No traffic yet: an empty list, not null.
	code, body := r.adminGet(t, "/debug/breakers")
	if code != 200 || !regexp.MustCompile(`"destinations":\s*\[\s*\]`).MatchString(body) {
		t.Errorf("/debug/breakers before traffic: %d %s", code, body)
	}

	r.get(t)
	var doc breakersDoc
	code, body = r.adminGet(t, "/debug/breakers")
	if err := json.Unmarshal([]byte(body), &doc); code != 200 || err != nil {
		t.Fatalf("/debug/breakers: %d %v %s", code, err, body)
	}
	if len(doc.Destinations) != 1 {
		t.Fatalf("/debug/breakers: %s", body)
	}
	d := doc.Destinations[0]
	if d.Destination != geo || d.Policy != "geo" || d.State != "closed" || d.Counts == nil || d.OpenUntil != nil || d.Because != "" {
		t.Errorf("closed breaker: %s", body)
	}
	if d.Counts != nil {
		for _, k := range []string{"requests", "totalSuccesses", "totalFailures", "consecutiveSuccesses", "consecutiveFailures"} {
			if _, ok := (*d.Counts)[k]; !ok {
				t.Errorf("counts lacks %q: %s", k, body)
			}
		}
		if (*d.Counts)["totalSuccesses"] != 1 {
			t.Errorf("counts after one success: %v", *d.Counts)
		}
	}

	r.failuresToOpen(t, u, 10)
	doc = breakersDoc{}
	_, body = r.adminGet(t, "/debug/breakers")
	if err := json.Unmarshal([]byte(body), &doc); err != nil || len(doc.Destinations) != 1 {
		t.Fatalf("/debug/breakers: %v %s", err, body)
	}
	d = doc.Destinations[0]
	if d.State != "open" || d.OpenUntil == nil || !d.OpenUntil.After(time.Now().Add(50*time.Second)) {
		t.Errorf("open breaker (openTimeout 60s): %s", body)
	}
	if !strings.Contains(d.Because, "failures in a row (consecutiveFailures: ") {
		t.Errorf("open breaker: openedBecause %q, want the rule that opened it: %s", d.Because, body)
	}
	if v, ok := r.metrics(t).Value("minimesh_circuit_breaker_state", "destination", geo, "state", "open"); !ok || v != 1 {
		t.Errorf(`minimesh_circuit_breaker_state{state="open"} = %v (present %v), want 1`, v, ok)
	}

	// Reset: the next request reaches the upstream.
	u.status.Store(200)
	before := u.Hits.Load()
	if resp := r.get(t); resp.StatusCode != 503 || u.Hits.Load() != before {
		t.Fatalf("open breaker let a request through: %d", resp.StatusCode)
	}
	code, body = r.adminPost(t, "/debug/breakers/reset?destination="+geo)
	if code != 200 {
		t.Fatalf("reset: %d %s", code, body)
	}
	if resp := r.get(t); resp.StatusCode != 200 || u.Hits.Load() != before+1 {
		t.Fatalf("after reset: %d, upstream hits %d, want 200 from the upstream", resp.StatusCode, u.Hits.Load()-before)
	}
	_, body = r.adminGet(t, "/debug/breakers")
	doc = breakersDoc{}
	if err := json.Unmarshal([]byte(body), &doc); err != nil || len(doc.Destinations) != 1 || doc.Destinations[0].State != "closed" || doc.Destinations[0].OpenUntil != nil {
		t.Errorf("after reset: %v %s", err, body)
	}
	if v, ok := r.metrics(t).Value("minimesh_circuit_breaker_state", "destination", geo, "state", "closed"); !ok || v != 1 {
		t.Errorf(`minimesh_circuit_breaker_state{state="closed"} after reset = %v (present %v), want 1`, v, ok)
	}
	if code, _ := r.adminPost(t, "/debug/breakers/reset?destination=nope-service:8000"); code != 404 {
		t.Errorf("reset of an unknown destination: %d, want 404", code)
	}
}

func TestDrainCompletesInFlight(t *testing.T) {
	u := newUpstream(t)
	u.Delay.Store(int64(time.Second))
	r := start(t, sidecar.Config{Resolve: map[string]string{geo: u.Host()}, DrainTimeout: 5 * time.Second})

	res := proxytest.GetAsync(r.client, "http://"+geo+"/")
	u.AwaitRequest(t, 5*time.Second)
	cancelled := time.Now()
	r.cancel()

	// /ready turns 503 at once, while the request is still in flight.
	var code int
	if !proxytest.Poll(500*time.Millisecond, 5*time.Millisecond, func() bool {
		code, _ = r.adminGet(t, "/ready")
		return code == 503
	}) {
		t.Fatalf("/ready still %d %v after the drain began", code, time.Since(cancelled))
	}
	// New connections are refused.
	if !proxytest.Poll(500*time.Millisecond, 5*time.Millisecond, func() bool {
		c, err := net.DialTimeout("tcp", r.sc.OutboundAddr(), time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	}) {
		t.Fatal("outbound listener still accepts connections during the drain")
	}
	select {
	case x := <-res:
		t.Fatalf("request ended before its upstream answered: %+v", x)
	default:
	}

	select {
	case x := <-res:
		if x.Err != nil || x.Code != 200 || x.Body != "hello from geo\n" {
			t.Fatalf("in-flight request: %+v, want 200 with the upstream's body", x)
		}
		// Begun before the drain, answered during it: Connection: close
		// too (docs/operations.md, Shutdown), or its client would send
		// the next request on a connection about to close.
		if !x.Close {
			t.Error("the in-flight request's answer during the drain lacks Connection: close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("in-flight request did not complete")
	}
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Serve: %v, want nil", err)
		}
		r.done <- nil // for the cleanup
	case <-time.After(3 * time.Second):
		t.Fatal("Serve did not return after the drain")
	}
}

func TestDrainTimeout(t *testing.T) {
	u := newUpstream(t)
	u.Delay.Store(int64(5 * time.Second))
	var alog syncBuffer
	r := start(t, sidecar.Config{Resolve: map[string]string{geo: u.Host()}, DrainTimeout: 200 * time.Millisecond, AccessLog: &alog})

	res := proxytest.GetAsync(r.client, "http://"+geo+"/")
	u.AwaitRequest(t, 5*time.Second)
	began := time.Now()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Serve: %v, want nil", err)
		}
		r.done <- nil
	case <-time.After(3 * time.Second):
		t.Fatal("Serve did not return within 3s with a 200ms drain timeout")
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("Serve took %v to return with a 200ms drain timeout, want ~200ms", took)
	}
	select {
	case <-res: // cut off: an error, whatever it is
	case <-time.After(3 * time.Second):
		t.Error("the request cut off by the drain timeout did not end")
	}
	// The sidecar cut it, not its app: 503 shutdown, as a tunnel's
	// "shutdown", never the 499 of an app that went away.
	if l := alog.String(); !strings.Contains(l, `"status":503`) || !strings.Contains(l, `"error":"shutdown"`) {
		t.Errorf("the access log of a request cut by the drain's end:\n%s\nwant status 503 and error shutdown", l)
	}
}

func TestMetricNames(t *testing.T) {
	u := newUpstream(t)
	r := start(t, sidecar.Config{Resolve: map[string]string{geo: u.Host()}})
	for i := 0; i < 3; i++ {
		if resp := r.get(t); resp.StatusCode != 200 {
			t.Fatalf("GET: %d", resp.StatusCode)
		}
	}
	ms := r.metrics(t)
	checks := []struct {
		name   string
		labels []string
		want   float64 // <0: any value
	}{
		{"minimesh_requests_total", []string{"direction", "outbound", "destination", geo, "method", "GET", "code", "200"}, 3},
		{"minimesh_request_duration_seconds_bucket", []string{"direction", "outbound", "destination", geo, "le", "+Inf"}, 3},
		{"minimesh_request_duration_seconds_count", []string{"direction", "outbound", "destination", geo}, 3},
		{"minimesh_circuit_breaker_state", []string{"destination", geo, "state", "closed"}, 1},
		{"minimesh_circuit_breaker_state", []string{"destination", geo, "state", "open"}, 0},
		{"minimesh_circuit_breaker_state", []string{"destination", geo, "state", "half-open"}, 0},
		{"minimesh_build_info", nil, 1},
		{"minimesh_policy_reloads_total", []string{"result", "success"}, -1},
		{"minimesh_policy_reloads_total", []string{"result", "error"}, -1},
		{"minimesh_connections_open", []string{"listener", "outbound"}, -1},
		{"minimesh_connections_open", []string{"listener", "admin"}, -1},
		{"minimesh_connections_refused_total", []string{"listener", "outbound"}, 0},
		{"minimesh_connections_refused_total", []string{"listener", "admin"}, 0},
	}
	for _, c := range checks {
		v, ok := ms.Value(c.name, c.labels...)
		if !ok {
			t.Errorf("/metrics lacks %s%v", c.name, c.labels)
		} else if c.want >= 0 && v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	for _, m := range ms {
		if strings.HasPrefix(m.Name, "minimesh_request") && m.Labels["destination"] != geo {
			t.Errorf("unexpected destination label: %+v", m)
		}
	}
}

package outbound_test

// Shared helpers of the outbound integration tests: a real sidecar on
// loopback (outbound and admin listeners, policies from a temporary
// directory), real upstream servers that succeed or fail in a chosen
// way, and readers of the admin endpoints (/debug/breakers, /metrics).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// geo is the authority the apps of these tests call, as the services of
// the replaced stack call each other.
const geo = "geo-service:8000"

// testSidecar is a sidecar serving on loopback for one test.
type testSidecar struct {
	t     testing.TB
	Addr  string   // outbound listener, host:port
	URL   *url.URL // http://Addr, for http.ProxyURL
	Admin string   // admin listener, host:port
	Dir   string   // the policy directory
	S     *sidecar.Sidecar
	admin *http.Client

	cancel   context.CancelFunc // begins the drain, as SIGTERM does
	stopped  chan struct{}      // closed once Serve returned
	serveErr error              // what Serve returned, once stopped
}

// Stop begins the sidecar's drain, as SIGTERM does, and gives a channel
// closed once Serve has returned. The test's cleanup waits for it too and
// reports Serve's error.
func (sc *testSidecar) Stop() <-chan struct{} {
	sc.cancel()
	return sc.stopped
}

type sidecarOpt func(*sidecar.Config)

func withNamespace(ns string) sidecarOpt { return func(c *sidecar.Config) { c.Namespace = ns } }

// withStdTransport sends every request through http.Transport, never the
// fast path.
func withStdTransport() sidecarOpt { return func(c *sidecar.Config) { c.StdTransport = true } }

// withAccessLog writes the sidecar's access log to l.
func withAccessLog(l *accessLog) sidecarOpt { return func(c *sidecar.Config) { c.AccessLog = l } }

// withFastTransport sends bodiless GETs through the fast transport even
// in the runs of the suite with MINIMESH_TEST_TRANSPORT=std: for what
// only the fast transport promises.
func withFastTransport() sidecarOpt { return func(c *sidecar.Config) { c.StdTransport = false } }

// withDrainTimeout sets the sidecar's --drain-timeout.
func withDrainTimeout(d time.Duration) sidecarOpt {
	return func(c *sidecar.Config) { c.DrainTimeout = d }
}

// withServer picks the sidecar's HTTP/1 server (sidecar.ServerLean or
// sidecar.ServerStd).
func withServer(s string) sidecarOpt { return func(c *sidecar.Config) { c.Server = s } }

// startSidecar writes policies (YAML, possibly several documents) into a
// fresh policy directory, starts a sidecar on loopback and waits until
// /ready answers and the policies are in force. The sidecar stops when
// the test ends.
func startSidecar(t *testing.T, policies string, resolve map[string]string, opts ...sidecarOpt) *testSidecar {
	t.Helper()
	dir := t.TempDir()
	if policies != "" {
		proxytest.WriteFile(t, filepath.Join(dir, "policies.yaml"), policies)
	}
	cfg := sidecar.Config{
		OutboundAddr:   "127.0.0.1:0",
		AdminAddr:      "127.0.0.1:0",
		PolicyDir:      dir,
		Resolve:        resolve,
		ConnectTimeout: 2 * time.Second,
		DrainTimeout:   time.Second,
		Logger:         slog.New(slog.DiscardHandler),
		Server:         proxytest.Server(),
		StdTransport:   proxytest.StdTransport(),
	}
	if os.Getenv("ITEST_DEBUG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := sidecar.Listen(cfg)
	if err != nil {
		t.Fatalf("sidecar.Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sc := &testSidecar{
		t:       t,
		Addr:    s.OutboundAddr(),
		URL:     &url.URL{Scheme: "http", Host: s.OutboundAddr()},
		Admin:   s.AdminAddr(),
		Dir:     dir,
		S:       s,
		admin:   &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second},
		cancel:  cancel,
		stopped: make(chan struct{}),
	}
	go func() {
		sc.serveErr = s.Serve(ctx)
		close(sc.stopped)
	}()
	t.Cleanup(func() {
		if os.Getenv("ITEST_DEBUG") != "" {
			st := time.Now()
			defer func() { t.Logf("sidecar stop took %v", time.Since(st)) }()
		}
		select {
		case <-sc.Stop():
			if sc.serveErr != nil {
				t.Errorf("sidecar Serve: %v", sc.serveErr)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("sidecar did not stop within 5s")
		}
		sc.admin.CloseIdleConnections()
	})

	readyStart := time.Now()
	if err := proxytest.WaitReady(sc.Admin, 5*time.Second); err != nil {
		t.Fatalf("sidecar %v", err)
	}
	if os.Getenv("ITEST_DEBUG") != "" {
		t.Logf("sidecar ready after %v", time.Since(readyStart))
	}
	// A policy file with a mistake would leave the built-in default in
	// force and every assertion below meaningless: fail here instead.
	var conf struct {
		LastError string `json:"lastError"`
		Policies  []struct {
			Spec struct {
				Service string `json:"service"`
			} `json:"spec"`
		} `json:"policies"`
	}
	sc.getJSON("/debug/config", &conf)
	if conf.LastError != "" {
		t.Fatalf("policies did not load: %s", conf.LastError)
	}
	return sc
}

// Client returns an app's HTTP client that uses the sidecar as its
// HTTP_PROXY: requests go out in absolute form.
func (sc *testSidecar) Client() *http.Client {
	tr := &http.Transport{
		Proxy:               http.ProxyURL(sc.URL),
		DisableCompression:  true, // see exactly what the sidecar sends back
		MaxIdleConnsPerHost: 100,
	}
	sc.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// getJSON decodes an admin endpoint's JSON answer into v.
func (sc *testSidecar) getJSON(path string, v any) {
	sc.t.Helper()
	resp, err := sc.admin.Get("http://" + sc.Admin + path)
	if err != nil {
		sc.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		sc.t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		sc.t.Fatalf("GET %s: decoding: %v", path, err)
	}
}

// breakerCounts mirrors the counts of /debug/breakers.
type breakerCounts struct {
	Requests             uint32 `json:"requests"`
	TotalSuccesses       uint32 `json:"totalSuccesses"`
	TotalFailures        uint32 `json:"totalFailures"`
	ConsecutiveSuccesses uint32 `json:"consecutiveSuccesses"`
	ConsecutiveFailures  uint32 `json:"consecutiveFailures"`
}

// breakerStatus is one entry of /debug/breakers.
type breakerStatus struct {
	Destination string        `json:"destination"`
	Policy      string        `json:"policy"`
	State       string        `json:"state"`
	Counts      breakerCounts `json:"counts"`
	OpenUntil   *time.Time    `json:"openUntil"`
}

// breakers returns /debug/breakers by destination.
func (sc *testSidecar) breakers() map[string]breakerStatus {
	sc.t.Helper()
	var out struct {
		Destinations []breakerStatus `json:"destinations"`
	}
	sc.getJSON("/debug/breakers", &out)
	m := make(map[string]breakerStatus, len(out.Destinations))
	for _, d := range out.Destinations {
		if _, dup := m[d.Destination]; dup {
			sc.t.Fatalf("/debug/breakers lists %s twice", d.Destination)
		}
		m[d.Destination] = d
	}
	return m
}

// breaker returns one destination's entry of /debug/breakers.
func (sc *testSidecar) breaker(dest string) breakerStatus {
	sc.t.Helper()
	b, ok := sc.breakers()[dest]
	if !ok {
		sc.t.Fatalf("/debug/breakers has no destination %q (has %v)", dest, keys(sc.breakers()))
	}
	return b
}

// waitBreakerState polls /debug/breakers until dest is in state.
func (sc *testSidecar) waitBreakerState(dest, state string, within time.Duration) {
	sc.t.Helper()
	var b breakerStatus
	if !proxytest.Poll(within, 5*time.Millisecond, func() bool {
		b = sc.breaker(dest)
		return b.State == state
	}) {
		sc.t.Fatalf("breaker of %s is %s after %v, want %s", dest, b.State, within, state)
	}
}

// metricSet is one scrape of /metrics.
type metricSet proxytest.Metrics

// metrics scrapes /metrics.
func (sc *testSidecar) metrics() metricSet {
	sc.t.Helper()
	ms, err := proxytest.ScrapeMetrics(sc.Admin)
	if err != nil {
		sc.t.Fatal(err)
	}
	return metricSet(ms)
}

// metric is a shortcut for one scrape and one value.
func (sc *testSidecar) metric(name string, labels ...string) float64 {
	sc.t.Helper()
	return sc.metrics().value(name, labels...)
}

// waitMetric polls /metrics until the value is want, and fails after
// within. It is for values that settle after the client has its answer
// (such as a request whose client went away).
func (sc *testSidecar) waitMetric(want float64, within time.Duration, name string, labels ...string) {
	sc.t.Helper()
	var got float64
	var last metricSet
	if !proxytest.Poll(within, 5*time.Millisecond, func() bool {
		last = sc.metrics()
		got = last.value(name, labels...)
		return got == want
	}) {
		// Every series of the metric: a value under another label (a
		// result other than the one awaited, say) says what happened.
		var all []string
		for _, s := range last {
			if s.Name == name {
				all = append(all, fmt.Sprintf("%v %v", s.Labels, s.Value))
			}
		}
		sc.t.Fatalf("%s%v = %v after %v, want %v; its series: %v", name, labels, got, within, want, all)
	}
}

// value sums the samples of a counter or gauge whose labels include the
// given name/value pairs; 0 when none match. For a histogram, name one of
// its series (name_count, say).
func (m metricSet) value(name string, labels ...string) float64 {
	v, _ := proxytest.Metrics(m).Value(name, labels...)
	return v
}

// policyDoc renders one ResiliencePolicy document. spec holds the lines
// of spec after service, indented by two spaces.
func policyDoc(name, service, spec string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata:\n  name: %s\nspec:\n  service: %q\n", name, service)
	for _, line := range strings.Split(strings.Trim(spec, "\n"), "\n") {
		if strings.TrimSpace(line) != "" {
			b.WriteString("  " + line + "\n")
		}
	}
	b.WriteString("---\n")
	return b.String()
}

// resolve maps every name to addr, like --resolve NAME=ADDR.
func resolve(addr string, names ...string) map[string]string {
	m := make(map[string]string, len(names))
	for _, n := range names {
		m[n] = addr
	}
	return m
}

// upstream is a real HTTP server that counts the requests it handles
// (see proxytest.Upstream; Host is its host:port).
type upstream struct {
	*proxytest.Upstream
	hits *atomic.Int64 // &Upstream.Hits
}

// newUpstream starts an upstream whose handler runs after the hit is
// counted; n is the hit's number, from 1. The handler's context also ends
// when the test does, so that a handler that hangs lets the server close.
func newUpstream(t *testing.T, h func(w http.ResponseWriter, r *http.Request, n int64)) *upstream {
	t.Helper()
	u := proxytest.NewUpstream(t, h)
	return &upstream{Upstream: u, hits: &u.Hits}
}

// recoveringUpstream answers failing with an empty body until the test
// sets healthy, then as h does: the destination of the breaker tests,
// which open the breaker and then let probes through.
func recoveringUpstream(t *testing.T, failing int, h func(w http.ResponseWriter, r *http.Request)) (u *upstream, healthy *atomic.Bool) {
	t.Helper()
	healthy = new(atomic.Bool)
	u = newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		if !healthy.Load() {
			w.WriteHeader(failing)
			return
		}
		h(w, r)
	})
	return u, healthy
}

// quickBreakerSidecar is a sidecar in front of u for geo whose breaker
// opens on two consecutive failures and, 300 ms later, lets halfOpen
// probes through.
func quickBreakerSidecar(t *testing.T, u *upstream, halfOpen int) *testSidecar {
	t.Helper()
	return startSidecar(t, policyDoc("geo", "geo-service", fmt.Sprintf(`
circuitBreaker:
  consecutiveFailures: 2
  openTimeout: 300ms
  halfOpenRequests: %d
`, halfOpen)), resolve(u.Host(), geo))
}

// hang blocks until the request is cancelled or the test ends.
func hang(r *http.Request) { <-r.Context().Done() }

func status(code int) func(http.ResponseWriter, *http.Request, int64) {
	return func(w http.ResponseWriter, _ *http.Request, _ int64) {
		w.WriteHeader(code)
		fmt.Fprintf(w, "upstream says %d\n", code)
	}
}

// newResetUpstream accepts connections, reads one request and resets the
// connection (RST, no response). It counts the requests it read.
func newResetUpstream(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	addr, _ := proxytest.RawServer(t, func(c net.Conn, _ int) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err == nil {
			_, _ = io.Copy(io.Discard, req.Body)
			hits.Add(1)
		}
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	return addr, &hits
}

// fetch sends req and returns the response with its body read.
func fetch(t *testing.T, c *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp, body
}

// get is fetch of a GET.
func get(t *testing.T, c *http.Client, rawURL string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fetch(t, c, req)
}

// sidecarError is the JSON body of the sidecar's own error answers.
type sidecarError struct {
	Error             string `json:"error"`
	Destination       string `json:"destination"`
	Message           string `json:"message"`
	RetryAfterSeconds int    `json:"retryAfterSeconds"`
	RequestID         string `json:"requestId"`
}

// expectSidecarError checks an answer of the sidecar itself: status,
// X-Minimesh-Error, a JSON body naming the destination.
func expectSidecarError(t *testing.T, resp *http.Response, body []byte, code int, kind, dest string) sidecarError {
	t.Helper()
	if resp.StatusCode != code {
		t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, code, body)
	}
	if got := resp.Header.Get("X-Minimesh-Error"); got != kind {
		t.Fatalf("X-Minimesh-Error %q, want %q", got, kind)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json", ct)
	}
	var e sidecarError
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("body is not JSON: %v: %q", err, body)
	}
	if e.Error != kind || e.Destination != dest {
		t.Fatalf("body names error %q destination %q, want %q %q: %s", e.Error, e.Destination, kind, dest, body)
	}
	if !strings.Contains(e.Message, dest) {
		t.Fatalf("message %q does not name %s", e.Message, dest)
	}
	return e
}

// expectCircuitOpen checks the contract's fast-fail answer: 503,
// circuit-open, Retry-After in whole seconds (1 to maxRetryAfter).
func expectCircuitOpen(t *testing.T, resp *http.Response, body []byte, dest string, maxRetryAfter int) {
	t.Helper()
	e := expectSidecarError(t, resp, body, http.StatusServiceUnavailable, "circuit-open", dest)
	ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > maxRetryAfter {
		t.Fatalf("Retry-After %q, want an integer in [1, %d]", resp.Header.Get("Retry-After"), maxRetryAfter)
	}
	if e.RetryAfterSeconds != ra {
		t.Fatalf("body retryAfterSeconds %d, header Retry-After %d", e.RetryAfterSeconds, ra)
	}
}

// dialSidecar opens a raw connection to the outbound listener, closed
// when the test ends.
func dialSidecar(t *testing.T, sc *testSidecar) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", sc.Addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// rawRoundTrip writes raw bytes to addr and reads one response.
func rawRoundTrip(t *testing.T, addr, raw string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatalf("writing request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading response body: %v", err)
	}
	return resp, body
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// accessLog collects a sidecar's access log (sidecar.Config.AccessLog).
// The sidecar writes it from a background flusher every 200 ms, so read
// it with wait.
type accessLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *accessLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// accessEntry is one access log line.
type accessEntry struct {
	RequestID   string `json:"request_id"`
	Destination string `json:"destination"`
	Method      string `json:"method"`
	Path        string `json:"path"`
	Status      int    `json:"status"`
	Attempts    int    `json:"attempts"`
	BytesIn     int64  `json:"bytes_in"`
	BytesOut    int64  `json:"bytes_out"`
	Error       string `json:"error"`
	GRPCStatus  string `json:"grpc_status"`
	TraceID     string `json:"trace_id"`
	SpanID      string `json:"span_id"`
}

// entries decodes the lines written so far.
func (l *accessLog) entries(t testing.TB) []accessEntry {
	t.Helper()
	l.mu.Lock()
	text := l.b.String()
	l.mu.Unlock()
	var out []accessEntry
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if line == "" {
			continue
		}
		var e accessEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("access log line is not JSON: %v: %q", err, line)
		}
		out = append(out, e)
	}
	return out
}

// wait polls until the log has n lines and returns them. A line is logged
// before its response reaches the app, so once the app has n answers the
// first flush that shows any of their lines shows them all: more than n
// lines then fails at once.
func (l *accessLog) wait(t testing.TB, n int, within time.Duration) []accessEntry {
	t.Helper()
	var es []accessEntry
	if !proxytest.Poll(within, 5*time.Millisecond, func() bool {
		es = l.entries(t)
		return len(es) >= n
	}) || len(es) != n {
		t.Fatalf("access log has %d lines after %v, want %d: %+v", len(es), within, n, es)
	}
	return es
}

// newRawUpstream is a loopback TCP server that reads the head of one
// request per connection and hands the connection to answer, which reads
// the body if it wants to (req.Body) and writes whatever bytes it likes;
// the connection is closed after answer returns (answer may reset it
// first with resetConn). It counts the requests it read.
func newRawUpstream(t *testing.T, answer func(c net.Conn, req *http.Request)) (string, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after the listener's close: cleanups run last first
	addr := serveConns(t, &wg, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		hits.Add(1)
		answer(c, req)
	})
	return addr, &hits
}

// serveConns runs serve on each connection a loopback listener accepts,
// in a goroutine of its own that wg counts, and closes the connection
// when serve returns. The listener closes when the test ends; it returns
// its address.
func serveConns(t *testing.T, wg *sync.WaitGroup, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// resetConn closes c with an RST instead of a FIN.
func resetConn(c net.Conn) {
	_ = c.(*net.TCPConn).SetLinger(0)
	_ = c.Close()
}

// ackControl is the internal tests' (h2upstream_helpers_test.go): the
// rigs of both packages answer SETTINGS and PINGs alike.
var ackControl = outbound.AckControl

// Package telemetry tests the sidecar's traces and metrics against the
// real backends: Jaeger v2 (OTLP/gRPC in, query API out) and Prometheus
// (scraping the admin port, evaluating the dashboards' queries).
package telemetry

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/internal/freeport"
)

func TestMain(m *testing.M) {
	code := m.Run()
	tools.RemoveBuilt()
	os.Exit(code)
}

// sidecarOpts configures one sidecar.
type sidecarOpts struct {
	OTLP     string            // --otlp-endpoint; empty: tracing off
	Resolve  map[string]string // service HOST:PORT → loopback ADDR
	Policies string            // ResiliencePolicy YAML; empty: built-in defaults
	Env      []string          // added to the environment
}

type sidecar struct {
	Outbound string // the outbound listener (HTTP_PROXY)
	Admin    string // the admin server
	Client   *http.Client
	proc     *proc.Proc
}

const (
	serviceName = "tenant-service"
	podName     = "tenant-abc"
	namespace   = "bakery-ia"
)

// startSidecar runs minimesh-proxy on free loopback ports as the pod
// tenant-abc of service tenant-service in bakery-ia, and waits for /ready.
func startSidecar(t *testing.T, o sidecarOpts) *sidecar {
	t.Helper()
	// bin/minimesh-proxy from MINIMESH_BIN_DIR (make build), or a build of
	// this tree.
	bin := tools.BuiltT(t, "minimesh-proxy", "./proxy/cmd/minimesh-proxy")
	var s *sidecar
	// On other ports again if one was taken before the sidecar bound it.
	if _, err := freeport.Start(2, func(addrs []string) error {
		s = &sidecar{Outbound: addrs[0], Admin: addrs[1]}
		args := []string{"run",
			"--outbound-addr", s.Outbound,
			"--admin-addr", s.Admin,
			"--service-name", serviceName,
			"--log-level", "warn",
			"--access-log", "off",
		}
		if o.OTLP != "" {
			args = append(args, "--otlp-endpoint", o.OTLP, "--trace-sample-ratio", "1")
		}
		for host, addr := range o.Resolve {
			args = append(args, "--resolve", host+"="+addr)
		}
		if o.Policies != "" {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "policies.yaml"), []byte(o.Policies), 0o644); err != nil {
				t.Fatal(err)
			}
			args = append(args, "--policy-dir", dir)
		}
		env := append(childEnv(), "POD_NAME="+podName, "POD_NAMESPACE="+namespace)
		env = append(env, o.Env...)
		s.proc = proc.StartT(t, "minimesh-proxy", bin, args, proc.Options{Env: env})
		return s.proc.WaitReady(15*time.Second, proc.GetOK("http://"+s.Admin+"/ready"))
	}); err != nil {
		t.Fatal(err)
	}
	proxyURL := &url.URL{Scheme: "http", Host: s.Outbound}
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	s.Client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	return s
}

// childEnv is the test's environment without proxy settings and without
// MINIMESH_ variables (the Makefile exports some; the sidecar reads its
// flags from MINIMESH_*).
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "MINIMESH_"), strings.EqualFold(k, "http_proxy"),
			strings.EqualFold(k, "https_proxy"), strings.EqualFold(k, "no_proxy"),
			k == "POD_NAME", k == "POD_NAMESPACE":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// get sends GET url through the sidecar with extra headers and returns the
// response with its body read.
func (s *sidecar) get(t *testing.T, u string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		t.Fatalf("GET %s through the sidecar: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", u, err)
	}
	return resp, string(b)
}

// metrics returns the admin /metrics exposition, as Prometheus's text
// format.
func (s *sidecar) metrics() ([]byte, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + s.Admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// metricValue sums the samples of metric name (any labels) in the
// exposition; found is false when there is none.
func metricValue(exposition []byte, name string) (v float64, found bool) {
	sc := bufio.NewScanner(strings.NewReader(string(exposition)))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue // a longer name
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		x, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		v += x
		found = true
	}
	return v, found
}

// newTraceparent returns a sampled W3C traceparent with random ids.
func newTraceparent() (header, traceID, spanID string) {
	traceID, spanID = randHex(16), randHex(8)
	return "00-" + traceID + "-" + spanID + "-01", traceID, spanID
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// parseTraceparent splits version-traceid-parentid-flags.
func parseTraceparent(h string) (traceID, parentID string, ok bool) {
	f := strings.Split(h, "-")
	if len(f) != 4 || len(f[1]) != 32 || len(f[2]) != 16 {
		return "", "", false
	}
	return f[1], f[2], true
}

// upstream is an httptest server that answers status and records the
// traceparent of every request it gets.
type upstream struct {
	URL, Addr string

	mu      sync.Mutex
	parents []string
	status  int
}

func newUpstream(t *testing.T, status int) *upstream {
	u := &upstream{status: status}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.parents = append(u.parents, r.Header.Get("traceparent"))
		st := u.status
		u.mu.Unlock()
		w.WriteHeader(st)
		io.WriteString(w, "ok\n")
	}))
	t.Cleanup(srv.Close)
	u.URL = srv.URL
	u.Addr = strings.TrimPrefix(srv.URL, "http://")
	return u
}

// setStatus changes the status of the following answers.
func (u *upstream) setStatus(code int) {
	u.mu.Lock()
	u.status = code
	u.mu.Unlock()
}

func (u *upstream) traceparents() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.parents...)
}

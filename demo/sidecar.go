package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/internal/freeport"
)

// destination is the breaker the demo watches, as the sidecar names it.
const destination = "nominatim-service:8000"

// policyYAML is the ResiliencePolicy the demo gives the sidecar.
func policyYAML(openTimeout time.Duration) string {
	return fmt.Sprintf(`apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata:
  name: nominatim
  namespace: bakery-ia
spec:
  service: nominatim-service
  timeout: 2s
  circuitBreaker:
    consecutiveFailures: 5
    openTimeout: %s   # production default: 60s
    halfOpenRequests: 2
`, openTimeout)
}

// sidecar is a running minimesh-proxy subprocess and a client for its admin
// endpoints.
type sidecar struct {
	cmd      *exec.Cmd
	outbound string // host:port of the outbound (HTTP_PROXY) listener
	admin    string // host:port of the admin server
	log      *tailBuffer
	exited   chan struct{} // closed when the process has exited
	waitErr  error         // valid once exited is closed
	http     *http.Client  // for the admin server: never through a proxy
}

// startSidecar runs `bin run ...` with the demo's flags.
func startSidecar(bin, policyDir, upstreamAddr string) (*sidecar, error) {
	addrs, err := freeport.Addrs(2)
	if err != nil {
		return nil, err
	}
	outbound, admin := addrs[0], addrs[1]
	s := &sidecar{
		outbound: outbound,
		admin:    admin,
		log:      &tailBuffer{max: 40},
		exited:   make(chan struct{}),
		http: &http.Client{
			Transport: &http.Transport{Proxy: nil},
			Timeout:   2 * time.Second,
		},
	}
	s.cmd = exec.Command(bin, "run",
		"--outbound-addr", outbound,
		"--admin-addr", admin,
		"--policy-dir", policyDir,
		"--service-name", "tenant-service",
		"--resolve", destination+"="+upstreamAddr,
		"--log-level", "warn",
	)
	s.cmd.Env = sidecarEnv()
	s.cmd.Stdout = s.log
	s.cmd.Stderr = s.log
	s.cmd.SysProcAttr = sysProcAttr()
	started := make(chan error)
	go func() {
		// On Linux the sidecar gets SIGTERM when the OS thread that
		// started it ends (Pdeathsig, see sysProcAttr), not the process
		// (go.dev/issue/27505): pin this goroutine to its thread for as
		// long as the sidecar runs.
		runtime.LockOSThread()
		if err := s.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return s, nil
}

// sidecarEnv is the demo's environment without proxy settings, which are
// the tenant's business and must not loop the sidecar's own upstream
// traffic back into itself.
func sidecarEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// waitReady polls GET /ready until it answers 200.
func (s *sidecar) waitReady(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		resp, err := s.http.Get("http://" + s.admin + "/ready")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.exited:
			return fmt.Errorf("sidecar exited before it was ready: %v", s.exitStatus())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sidecar not ready after %s (GET /ready: %v)", within, errOrStatus(resp, err))
		}
	}
}

func errOrStatus(resp *http.Response, err error) string {
	if err != nil {
		return err.Error()
	}
	return resp.Status
}

// stop sends SIGTERM and waits for the sidecar to exit, killing it after
// grace. It returns the exit error (nil for status 0).
func (s *sidecar) stop(grace time.Duration) error {
	select {
	case <-s.exited:
		return s.waitErr
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.cmd.Process.Kill() // no SIGTERM on this platform
	}
	select {
	case <-s.exited:
		return s.waitErr
	case <-time.After(grace):
		s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("did not exit within %s of SIGTERM, killed", grace)
	}
}

func (s *sidecar) alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

func (s *sidecar) exitStatus() string {
	if s.waitErr == nil {
		return "exit status 0"
	}
	return s.waitErr.Error()
}

// breakerView is one destination's entry in GET /debug/breakers.
type breakerView struct {
	Destination string `json:"destination"`
	Policy      string `json:"policy"`
	State       string `json:"state"` // closed, open, half-open
	Counts      struct {
		Requests             int64 `json:"requests"`
		TotalSuccesses       int64 `json:"totalSuccesses"`
		TotalFailures        int64 `json:"totalFailures"`
		ConsecutiveSuccesses int64 `json:"consecutiveSuccesses"`
		ConsecutiveFailures  int64 `json:"consecutiveFailures"`
	} `json:"counts"`
	OpenUntil string `json:"openUntil,omitempty"`
}

// openUntil parses OpenUntil; zero when absent or unreadable.
func (b *breakerView) openUntil() time.Time {
	t, _ := time.Parse(time.RFC3339Nano, b.OpenUntil)
	return t
}

// breaker fetches the nominatim breaker from /debug/breakers. It returns
// nil, nil when the sidecar has no breaker for it yet (no traffic).
func (s *sidecar) breaker() (*breakerView, error) {
	body, err := s.get("/debug/breakers")
	if err != nil {
		return nil, err
	}
	var doc struct {
		Destinations []breakerView `json:"destinations"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("GET /debug/breakers: %v", err)
	}
	var loose *breakerView
	for i := range doc.Destinations {
		d := &doc.Destinations[i]
		if d.Destination == destination {
			return d, nil
		}
		if strings.HasPrefix(d.Destination, "nominatim-service") {
			loose = d
		}
	}
	return loose, nil
}

func (s *sidecar) get(path string) ([]byte, error) {
	resp, err := s.http.Get("http://" + s.admin + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return body, nil
}

// loadedPolicies summarises GET /debug/config: which policies the sidecar
// applies and where each came from. "" if it cannot tell.
func (s *sidecar) loadedPolicies() string {
	body, err := s.get("/debug/config")
	if err != nil {
		return ""
	}
	var doc struct {
		Policies []struct {
			Metadata struct{ Name string }
			Spec     struct{ Service string }
			Source   string
		}
	}
	if json.Unmarshal(body, &doc) != nil {
		return ""
	}
	var parts []string
	for _, p := range doc.Policies {
		parts = append(parts, fmt.Sprintf("%s for %q from %s", p.Metadata.Name, p.Spec.Service, p.Source))
	}
	return strings.Join(parts, "; ")
}

// transition is a breaker state change, counted.
type transition struct{ From, To string }

// transitions reads minimesh_circuit_breaker_transitions_total for the
// nominatim destination from /metrics.
func (s *sidecar) transitions() (map[transition]int, error) {
	body, err := s.get("/metrics")
	if err != nil {
		return nil, err
	}
	return parseTransitions(body), nil
}

func parseTransitions(metrics []byte) map[transition]int {
	const name = "minimesh_circuit_breaker_transitions_total{"
	out := map[transition]int{}
	sc := bufio.NewScanner(bytes.NewReader(metrics))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		labels, rest, ok := strings.Cut(line[len(name):], "}")
		if !ok {
			continue
		}
		l := parseLabels(labels)
		if !strings.HasPrefix(l["destination"], "nominatim-service") {
			continue
		}
		f, err := strconv.ParseFloat(strings.Fields(rest + " x")[0], 64)
		if err != nil || f == 0 {
			continue
		}
		out[transition{l["from"], l["to"]}] += int(f)
	}
	return out
}

// parseLabels reads `a="x",b="y"` (Prometheus text format label values,
// with \" \\ \n escapes).
func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for s != "" {
		k, rest, ok := strings.Cut(s, `="`)
		if !ok {
			break
		}
		var v strings.Builder
		i := 0
		for ; i < len(rest) && rest[i] != '"'; i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				if rest[i] == 'n' {
					v.WriteByte('\n')
					continue
				}
			}
			v.WriteByte(rest[i])
		}
		out[strings.TrimSpace(strings.TrimPrefix(k, ","))] = v.String()
		if i >= len(rest) {
			break
		}
		s = rest[i+1:]
	}
	return out
}

// findProxyBin resolves the -proxy-bin flag: relative paths are taken from
// the module root (found upward from the working directory), so that
// `go run ./demo` works from anywhere in the repo.
func findProxyBin(flagValue string) (string, error) {
	if filepath.IsAbs(flagValue) {
		return flagValue, nil
	}
	if root, ok := moduleRoot(); ok {
		return filepath.Join(root, flagValue), nil
	}
	return filepath.Abs(flagValue)
}

// moduleRoot finds the directory of minimesh's go.mod above the working
// directory.
func moduleRoot() (string, bool) {
	dir, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/minimesh/minimesh")) {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// buildProxy builds the sidecar into dir with the go command, for when the
// demo is started without `make demo` and no binary was built yet.
func buildProxy(root, dir string) (string, error) {
	out := filepath.Join(dir, "minimesh-proxy")
	cmd := exec.Command("go", "build", "-o", out, "./proxy/cmd/minimesh-proxy")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./proxy/cmd/minimesh-proxy: %v\n%s", err, b)
	}
	return out, nil
}

// tailBuffer keeps the last max lines written to it (the sidecar's logs,
// shown if it fails).
type tailBuffer struct {
	mu      sync.Mutex
	max     int
	lines   []string
	partial []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.partial = append(t.partial, p...)
	for {
		i := bytes.IndexByte(t.partial, '\n')
		if i < 0 {
			break
		}
		t.lines = append(t.lines, string(t.partial[:i]))
		t.partial = t.partial[i+1:]
		if len(t.lines) > t.max {
			t.lines = t.lines[len(t.lines)-t.max:]
		}
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.Join(t.lines, "\n")
	if len(t.partial) > 0 {
		s += "\n" + string(t.partial)
	}
	return strings.TrimSpace(s)
}

var errSidecarDied = errors.New("the sidecar exited in the middle of the demo")

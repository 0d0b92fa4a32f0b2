package interception_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/wellknown"
)

// catchAll is the pod's one policy: every destination's breaker opens at
// the third failure and stays open long enough for every client to meet it.
const catchAll = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: every-destination}
spec:
  service: "*"
  retries: {attempts: 0}
  circuitBreaker: {consecutiveFailures: 3, openTimeout: 10m}
`

// A client is one of the HTTP clients a team's services are written with,
// run as the app would run it: in the pod, knowing nothing of a proxy (no
// proxy variable at all). argv gets the URL; the program prints
// "STATUS X-MINIMESH-ERROR" ("-" when the header is absent).
type client struct {
	name string
	argv func(url string) []string
	// parse, when set, turns the program's combined output into that line.
	parse func(out string) string
}

func clients(dir string) []client {
	py := func(kind string) client {
		return client{"python " + kind, func(u string) []string { return []string{"/usr/bin/python3", filepath.Join(dir, "client.py"), kind, u} }, nil}
	}
	node := func(kind string) client {
		return client{"node " + kind, func(u string) []string { return []string{"node", filepath.Join(dir, "client.mjs"), kind, u} }, nil}
	}
	java := func(kind string) client {
		return client{"java " + kind, func(u string) []string { return []string{"java", filepath.Join(dir, "Client.java"), kind, u} }, nil}
	}
	return []client{
		{"curl", func(u string) []string {
			return []string{"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %header{x-minimesh-error}\n", u}
		}, nil},
		{"wget", func(u string) []string { return []string{"wget", "-S", "-O", "/dev/null", "--tries=1", u} }, parseWget},
		py("urllib"), py("requests"), py("httpx"), py("aiohttp"), py("urllib3"),
		node("fetch"), node("http.get"),
		java("HttpClient"), java("HttpURLConnection"),
	}
}

// parseWget reads wget -S's server response from its log.
func parseWget(out string) string {
	status, meshErr := "", "-"
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if f := strings.Fields(l); len(f) >= 2 && strings.HasPrefix(f[0], "HTTP/") {
			status = f[1]
		}
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "X-Minimesh-Error") {
			meshErr = strings.TrimSpace(v)
		}
	}
	return status + " " + meshErr
}

// TestEveryClient: with the rules of minimesh-proxy init and the sidecar
// as UID 15000, each client's plain GET goes through the sidecar (the
// upstream sees its Via and X-Request-ID, once) and meets the breaker's
// fast-fail (503 circuit-open, the upstream never called); and a Go
// program's own &http.Transport{} does the same. These are the clients
// that bypassed the sidecar silently under proxy-env (issue #13).
func TestEveryClient(t *testing.T) {
	bin := needIPTables(t)
	var missing []string
	for _, p := range []string{"curl", "wget", "node", "java"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if out, err := exec.Command("/usr/bin/python3", "-c", "import requests, httpx, aiohttp, urllib3").CombinedOutput(); err != nil {
		missing = append(missing, "Debian's python3 with requests, httpx, aiohttp, urllib3: "+strings.TrimSpace(string(out)))
	}
	if len(missing) > 0 {
		proc.Unmet(t, "missing clients: %s (make tools installs them)", strings.Join(missing, ", "))
	}
	dir, err := filepath.Abs("testdata/clients")
	if err != nil {
		t.Fatal(err)
	}

	pod, peer := newPodAndPeer(t)
	pod.minimeshInit(t, bin)

	// The upstream: :80 answers, :8081 always fails; both count each path.
	var mu sync.Mutex
	type seen struct {
		n              int
		requestID, via string
	}
	hits := map[string]*seen{}
	upstream := func(code int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			s := hits[r.Host+r.URL.Path]
			if s == nil {
				s = &seen{}
				hits[r.Host+r.URL.Path] = s
			}
			s.n++
			s.requestID, s.via = r.Header.Get(wellknown.HeaderRequestID), r.Header.Get("Via")
			mu.Unlock()
			w.WriteHeader(code)
			io.WriteString(w, "upstream\n")
		})
	}
	for port, code := range map[string]int{"80": 200, "8081": 503} {
		srv := &http.Server{Handler: upstream(code)}
		go srv.Serve(peer.listen(t, ":"+port))
		t.Cleanup(func() { srv.Close() })
	}
	hit := func(key string) seen {
		mu.Lock()
		defer mu.Unlock()
		if s := hits[key]; s != nil {
			return *s
		}
		return seen{}
	}

	sc := startPodSidecar(t, pod, bin, catchAll)
	goGet := func(u string) (string, error) {
		resp, err := sc.client.Get(u)
		if err != nil {
			return "", err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return fmt.Sprintf("%d %s", resp.StatusCode, orDash(resp.Header.Get(wellknown.HeaderError))), nil
	}
	sidecar := sc.proc

	// Open the breaker of the failing upstream.
	failing := "http://" + peerV4.String() + ":8081"
	for i := 0; ; i++ {
		got, err := goGet(failing + "/open")
		if err != nil {
			t.Fatal(err)
		}
		if got == "503 circuit-open" {
			break
		}
		if i == 10 {
			t.Fatalf("the breaker is not open after 10 failures: %s\nsidecar:\n%s", got, sidecar.Output())
		}
	}

	run := func(t *testing.T, c client, u string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		argv := append([]string{"netns", "exec", pod.name, "env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp"}, c.argv(u)...)
		cmd := exec.CommandContext(ctx, "ip", argv...)
		cmd.Dir = "/tmp"
		out, err := cmd.CombinedOutput()
		if c.parse != nil {
			return c.parse(string(out))
		}
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", c.name, u, err, out)
		}
		line := strings.TrimSpace(string(out))
		if status, meshErr, _ := strings.Cut(line, " "); meshErr == "" {
			line = status + " -"
		}
		return line
	}
	healthy := "http://" + peerV4.String()
	check := func(t *testing.T, name string, get func(string) string) {
		path := "/" + strings.ReplaceAll(name, " ", "-")
		if got := get(healthy + path); got != "200 -" {
			t.Errorf("GET %s%s: %q, want 200", healthy, path, got)
		}
		s := hit(peerV4.String() + path)
		if s.n != 1 || s.requestID == "" || !strings.Contains(s.via, "minimesh") {
			t.Errorf("the upstream saw %+v for %s: want one request, through the sidecar (X-Request-ID, Via)", s, path)
		}
		if got := get(failing + path); got != "503 circuit-open" {
			t.Errorf("GET %s%s: %q, want the sidecar's 503 circuit-open", failing, path, got)
		}
		if s := hit(peerV4.String() + ":8081" + path); s.n != 0 {
			t.Errorf("the failing upstream was called %d times for %s behind an open breaker", s.n, path)
		}
	}
	for _, c := range clients(dir) {
		t.Run(c.name, func(t *testing.T) { check(t, c.name, func(u string) string { return run(t, c, u) }) })
	}
	t.Run("go own transport", func(t *testing.T) {
		check(t, "go own transport", func(u string) string {
			got, err := goGet(u)
			if err != nil {
				t.Fatal(err)
			}
			return got
		})
	})
	if t.Failed() {
		t.Logf("sidecar output:\n%s", sidecar.Output())
	}
}

// podSidecar is the sidecar running in a pod's namespace as the injector
// runs it under iptables interception (UID 15000, a policy directory), and
// an HTTP client whose connections start in the pod (so they are
// redirected like the app's).
type podSidecar struct {
	proc   *proc.Proc
	client *http.Client
}

func startPodSidecar(t *testing.T, pod *netns, bin, policy string) podSidecar {
	t.Helper()
	policies, err := os.MkdirTemp("", "minimesh-policies-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(policies) })
	if err := os.WriteFile(filepath.Join(policies, "policy.yaml"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(policies, 0o755); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	p := proc.StartT(t, "minimesh-proxy", bin, []string{"run", "--policy-dir", policies,
		"--admin-addr", "127.0.0.1:" + strconv.Itoa(wellknown.AdminPort)},
		proc.Options{
			Env:        []string{"PATH=/usr/bin:/bin"},
			Dir:        "/",
			Credential: &syscall.Credential{Uid: wellknown.ProxyUID, Gid: wellknown.ProxyUID},
			Start:      startIn(pod.name, stop),
		})
	c := netnsClient(t, pod.name)
	sc := podSidecar{proc: p, client: c}
	if err := p.WaitReady(15*time.Second, func() error {
		_, err := sc.admin("/ready")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return sc
}

// admin GETs path from the sidecar's admin port (loopback, in the pod).
func (s podSidecar) admin(path string) (string, error) {
	resp, err := s.client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", wellknown.AdminPort, path))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

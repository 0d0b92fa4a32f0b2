package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// binary is the minimesh-proxy built once by TestMain, with buildFlags
// (-race when the tests run with -race: see race_test.go).
var (
	binary     string
	buildFlags []string
)

// relayAddr is where this test process's own HTTP_PROXY points: a TCP
// relay to whichever sidecar relayTarget names. net/http reads the proxy
// environment once per process, so the variable must be set before any
// client runs, before the sidecar's port is known.
var (
	relayAddr   string
	relayTarget atomic.Pointer[string]
)

func TestMain(m *testing.M) {
	if os.Getenv("MINIMESH_TEST_CLIENT") == "1" {
		os.Exit(clientMain())
	}
	dir, err := os.MkdirTemp("", "minimesh-proxy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "minimesh-proxy")
	build := exec.Command("go", append(append([]string{"build"}, buildFlags...), "-o", binary, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "go build:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	ln, err := startRelay()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	for _, k := range proxyEnv {
		os.Unsetenv(k)
	}
	os.Setenv("HTTP_PROXY", "http://"+relayAddr)
	code := m.Run()
	ln.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

// clientMain is the child process of TestRealClientSubprocess: an app
// that knows nothing of minimesh and calls http.Get, which honours
// HTTP_PROXY through http.DefaultTransport.
func clientMain() int {
	target := os.Getenv("MINIMESH_TEST_URL")
	req, _ := http.NewRequest("GET", target, nil)
	p, err := http.ProxyFromEnvironment(req)
	fmt.Printf("proxy=%v\nproxy-error=%v\n", p, err)
	resp, err := http.Get(target)
	if err != nil {
		fmt.Printf("error=%v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("status=%d\nrequest-id=%s\nupstream-saw=%s\nbody=%q\n", resp.StatusCode,
		resp.Header.Get("X-Request-ID"), resp.Header.Get("X-Seen-Request-ID"), body)
	return 0
}

func startRelay() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	relayAddr = ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				to := relayTarget.Load()
				if to == nil {
					return
				}
				up, err := net.DialTimeout("tcp", *to, 5*time.Second)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{})
				go func() {
					_, _ = io.Copy(up, c)
					up.(*net.TCPConn).CloseWrite()
					close(done)
				}()
				_, _ = io.Copy(c, up)
				c.(*net.TCPConn).CloseWrite()
				<-done
			}()
		}
	}()
	return ln, nil
}

// proxyEnv are the variables that would send a child's traffic elsewhere.
var proxyEnv = []string{"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "REQUEST_METHOD"}

// childEnv is the environment without proxy and MINIMESH_ variables,
// plus extra.
func childEnv(extra ...string) []string {
	var env []string
outer:
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "MINIMESH_") {
			continue
		}
		for _, p := range proxyEnv {
			if k == p {
				continue outer
			}
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// upstream is a loopback service (see proxytest.Upstream for Delay and
// Arrived): / answers hello, /echo answers the method, length and SHA-256
// of the request body.
type upstream struct{ *proxytest.Upstream }

func newUpstream(t *testing.T) *upstream {
	return &upstream{proxytest.NewUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		w.Header().Set("X-Seen-Request-ID", r.Header.Get("X-Request-ID"))
		if r.URL.Path == "/echo" {
			h := sha256.New()
			n, _ := io.Copy(h, r.Body)
			fmt.Fprintf(w, "%s %d %s", r.Method, n, hex.EncodeToString(h.Sum(nil)))
			return
		}
		_, _ = io.WriteString(w, "hello from geo\n")
	})}
}

func (u *upstream) addr() string { return u.Host() }

// lineLog keeps a process's stderr and spots the ready line.
type lineLog struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	partial []byte
	ready   chan readyLine
}

type readyLine struct{ Outbound, Admin string }

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := l.partial[:i]
		l.partial = l.partial[i+1:]
		var rec struct {
			Msg      string `json:"msg"`
			Outbound string `json:"outbound"`
			Admin    string `json:"admin"`
		}
		if json.Unmarshal(line, &rec) == nil && rec.Msg == "sidecar ready" {
			select {
			case l.ready <- readyLine{rec.Outbound, rec.Admin}:
			default:
			}
		}
	}
	return len(p), nil
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// logLines returns the JSON log lines of stderr.
func (l *lineLog) logLines() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(l.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

type proc struct {
	cmd      *exec.Cmd
	log      *lineLog
	outbound string
	admin    string
	exited   chan struct{}
	err      error // of Wait, once exited is closed
}

// startProxy runs the binary until the test ends and waits for its
// ready line and its /ready.
func startProxy(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startBinary(t, binary, env, args...)
}

// startBinary is startProxy with another build of minimesh-proxy.
func startBinary(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	l := &lineLog{ready: make(chan readyLine, 1)}
	cmd := exec.Command(bin, append([]string{"run"}, args...)...)
	cmd.Env = childEnv(env...)
	cmd.Stderr = l
	cmd.Stdout = l
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: l, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
		if strings.Contains(l.String(), "WARNING: DATA RACE") {
			t.Error("the race detector found a data race in minimesh-proxy")
		}
		if t.Failed() {
			t.Logf("minimesh-proxy %v stderr:\n%s", args, l.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	select {
	case r := <-l.ready:
		p.outbound, p.admin = r.Outbound, r.Admin
	case <-p.exited:
		t.Fatalf("minimesh-proxy exited before ready: %v\n%s", p.err, l.String())
	case <-time.After(time.Until(deadline)):
		t.Fatalf("minimesh-proxy not ready within 10s:\n%s", l.String())
	}
	// The sidecar logs its ready line just before /ready turns 200 (so
	// that whoever saw the 200 finds the line): a started proxy is both.
	for p.admin != "" {
		if code, _ := p.adminGet("/ready"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("minimesh-proxy logged its ready line, but /ready did not answer 200 within 10s:\n%s", l.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return p
}

// local starts a sidecar on OS-picked loopback ports.
func local(t *testing.T, args ...string) *proc {
	return startProxy(t, nil, append([]string{"--outbound-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}, args...)...)
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(within):
		t.Fatalf("minimesh-proxy did not exit within %v", within)
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("wait: %v", p.err)
	return -1
}

func (p *proc) adminGet(path string) (int, string) {
	return proxytest.Get("http://" + p.admin + path)
}

func (p *proc) client() *http.Client {
	u := &url.URL{Scheme: "http", Host: p.outbound}
	tr := &http.Transport{Proxy: http.ProxyURL(u), DisableKeepAlives: true}
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}
}

const geo = "geo-service:8000"

// TestProxyFromEnvironmentInProcess: net/http's own HTTP_PROXY handling,
// as an app uses it, sends http://geo-service:8000/ through the sidecar.
func TestProxyFromEnvironmentInProcess(t *testing.T) {
	u := newUpstream(t)
	p := local(t, "--resolve", geo+"="+u.addr())
	relayTarget.Store(&p.outbound)
	t.Cleanup(func() { relayTarget.Store(nil) })

	// Why --resolve: the proxy environment never proxies loopback.
	req, _ := http.NewRequest("GET", u.URL, nil)
	if pu, _ := http.ProxyFromEnvironment(req); pu != nil {
		t.Fatalf("ProxyFromEnvironment proxies %s via %v; loopback should go direct", u.URL, pu)
	}
	req, _ = http.NewRequest("GET", "http://"+geo+"/", nil)
	if pu, _ := http.ProxyFromEnvironment(req); pu == nil || pu.Host != relayAddr {
		t.Fatalf("ProxyFromEnvironment(%s) = %v, want http://%s", req.URL, pu, relayAddr)
	}

	tr := http.DefaultTransport.(*http.Transport).Clone() // Proxy: ProxyFromEnvironment
	tr.DisableKeepAlives = true
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + geo + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	id := resp.Header.Get("X-Request-ID")
	if resp.StatusCode != 200 || string(body) != "hello from geo\n" || id == "" || resp.Header.Get("X-Seen-Request-ID") != id {
		t.Fatalf("through the sidecar: %d %q X-Request-ID %q, upstream saw %q", resp.StatusCode, body, id, resp.Header.Get("X-Seen-Request-ID"))
	}
	_, metrics := p.adminGet("/metrics")
	if !strings.Contains(metrics, `destination="geo-service:8000"`) {
		t.Errorf("the sidecar did not count the request:\n%s", metrics)
	}
}

// TestRealClientSubprocess runs this test binary as an app with HTTP_PROXY
// in its environment; it calls plain http.Get.
func TestRealClientSubprocess(t *testing.T) {
	u := newUpstream(t)
	p := local(t, "--resolve", geo+"="+u.addr())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = childEnv("MINIMESH_TEST_CLIENT=1", "MINIMESH_TEST_URL=http://"+geo+"/", "HTTP_PROXY=http://"+p.outbound)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			got[k] = v
		}
	}
	if got["status"] != "200" || got["request-id"] == "" || got["request-id"] != got["upstream-saw"] {
		t.Fatalf("client output:\n%s", out)
	}
	if got["proxy"] != "http://"+p.outbound {
		t.Errorf("client's proxy %q, want http://%s", got["proxy"], p.outbound)
	}
}

// needCurl skips without curl, except in CI where it must be there.
func needCurl(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("curl not installed: run make tools")
		}
		t.Skip("curl not installed")
	}
	return path
}

func curl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, needCurl(t), append([]string{"-sS", "--max-time", "15"}, args...)...)
	cmd.Env = childEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("curl %v: %v: %s", args, err, stderr.String())
	}
	return string(out), nil
}

func TestCurl(t *testing.T) {
	needCurl(t)
	u := newUpstream(t)
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello over tls\n")
	}))
	// curl without -k aborts the handshake; the server would log it.
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	tlsAddr := strings.TrimPrefix(tlsSrv.URL, "https://")
	p := local(t, "--resolve", geo+"="+u.addr(), "--resolve", "secure-service:8443="+tlsAddr)
	proxy := "http://" + p.outbound
	dir := t.TempDir()

	t.Run("GET", func(t *testing.T) {
		headers := filepath.Join(dir, "headers")
		out, err := curl(t, "-x", proxy, "-D", headers, "-w", "\n%{http_code}", "http://"+geo+"/")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(out, "\n200") || !strings.HasPrefix(out, "hello from geo\n") {
			t.Errorf("curl output %q", out)
		}
		h, _ := os.ReadFile(headers)
		if !strings.Contains(strings.ToLower(string(h)), "\nx-request-id: ") {
			t.Errorf("no X-Request-ID in the response headers:\n%s", h)
		}
		// A valid incoming ID is kept.
		if err := os.Remove(headers); err != nil {
			t.Fatal(err)
		}
		if _, err := curl(t, "-x", proxy, "-D", headers, "-H", "X-Request-ID: curl-abc-123", "http://"+geo+"/"); err != nil {
			t.Fatal(err)
		}
		h, _ = os.ReadFile(headers)
		if !strings.Contains(strings.ToLower(string(h)), "\nx-request-id: curl-abc-123\r\n") {
			t.Errorf("incoming X-Request-ID not kept:\n%s", h)
		}
	})

	t.Run("POST", func(t *testing.T) {
		data := make([]byte, 1<<20+123)
		for i := range data {
			data[i] = byte(i*7 + i>>11) // NULs, high bytes, no structure
		}
		file := filepath.Join(dir, "body.bin")
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		out, err := curl(t, "-x", proxy, "-X", "POST", "--data-binary", "@"+file, "http://"+geo+"/echo")
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("POST %d %s", len(data), hex.EncodeToString(sum[:])); out != want {
			t.Errorf("upstream got %q, want %q", out, want)
		}
	})

	t.Run("CONNECT", func(t *testing.T) {
		out, err := curl(t, "-k", "-x", proxy, "https://secure-service:8443/")
		if err != nil {
			t.Fatal(err)
		}
		if out != "hello over tls\n" {
			t.Errorf("through the tunnel: %q", out)
		}
		// Without -k the test server's certificate is refused: the TLS is
		// end to end, the sidecar does not terminate it.
		if _, err := curl(t, "-x", proxy, "https://secure-service:8443/"); err == nil {
			t.Error("curl accepted the test server's self-signed certificate without -k")
		}
	})
}

func TestFlagsFromEnv(t *testing.T) {
	u := newUpstream(t)

	t.Run("env used without flags", func(t *testing.T) {
		p := startProxy(t, []string{
			"MINIMESH_OUTBOUND_ADDR=127.0.0.1:0",
			"MINIMESH_ADMIN_ADDR=127.0.0.1:0",
			"MINIMESH_RESOLVE=other-service:80=127.0.0.1:1," + geo + "=" + u.addr(),
		})
		for _, a := range []string{p.outbound, p.admin} {
			if host, port, _ := net.SplitHostPort(a); host != "127.0.0.1" || port == "0" {
				t.Errorf("listening on %s, want the env's 127.0.0.1:<picked>", a)
			}
		}
		if code, _ := p.adminGet("/ready"); code != 200 {
			t.Errorf("/ready: %d", code)
		}
		resp, err := p.client().Get("http://" + geo + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("MINIMESH_RESOLVE not applied: %d", resp.StatusCode)
		}
	})

	// Both ways of reading and writing sockets proxy the same (the
	// outbound and sidecar suites run with raw I/O, the default).
	t.Run("raw I/O off from env", func(t *testing.T) {
		p := startProxy(t, []string{
			"MINIMESH_OUTBOUND_ADDR=127.0.0.1:0",
			"MINIMESH_ADMIN_ADDR=127.0.0.1:0",
			"MINIMESH_RAW_IO=false",
			"MINIMESH_RESOLVE=" + geo + "=" + u.addr(),
		})
		resp, err := p.client().Get("http://" + geo + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("through the sidecar with --raw-io=false: %d", resp.StatusCode)
		}
	})

	t.Run("flag wins over env", func(t *testing.T) {
		p := startProxy(t, []string{
			"MINIMESH_OUTBOUND_ADDR=127.0.0.1:notaport",
			"MINIMESH_ADMIN_ADDR=127.0.0.1:notaport",
			"MINIMESH_LOG_LEVEL=bogus",
		}, "--outbound-addr", "127.0.0.1:0", "--admin-addr=127.0.0.1:0", "--log-level", "debug")
		if code, _ := p.adminGet("/ready"); code != 200 {
			t.Errorf("/ready: %d", code)
		}
	})

	for _, c := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"bad --log-level", nil, []string{"--log-level", "loud"}, "--log-level"},
		{"bad --resolve", nil, []string{"--resolve", "geo-service"}, "-resolve"},
		{"bad --resolve target", nil, []string{"--resolve", "geo-service:8000=nowhere"}, "-resolve"},
		{"bad MINIMESH_LOG_LEVEL", []string{"MINIMESH_LOG_LEVEL=loud"}, nil, "log-level"},
		{"bad MINIMESH_RESOLVE", []string{"MINIMESH_RESOLVE=geo-service"}, nil, "MINIMESH_RESOLVE"},
		{"bad --drain-timeout", nil, []string{"--drain-timeout", "soon"}, "-drain-timeout"},
		{"bad --max-connections", nil, []string{"--max-connections", "-1"}, "--max-connections"},
		{"bad MINIMESH_MAX_CONNECTIONS", []string{"MINIMESH_MAX_CONNECTIONS=lots"}, nil, "MINIMESH_MAX_CONNECTIONS"},
		{"unknown flag", nil, []string{"--no-such-flag"}, "no-such-flag"},
		{"bad --raw-io", nil, []string{"--raw-io=maybe"}, "-raw-io"},
		{"bad MINIMESH_RAW_IO", []string{"MINIMESH_RAW_IO=maybe"}, nil, "MINIMESH_RAW_IO"},
		// Values a default used to replace without a word (a probe,
		// session 33).
		{"negative --drain-timeout", nil, []string{"--drain-timeout", "-5s"}, "--drain-timeout"},
		{"zero --drain-timeout", nil, []string{"--drain-timeout", "0"}, "--drain-timeout"},
		{"zero --connect-timeout", nil, []string{"--connect-timeout", "0s"}, "--connect-timeout"},
		{"negative --xds-initial-timeout", nil, []string{"--xds-initial-timeout", "-1s"}, "--xds-initial-timeout"},
		{"negative --max-request-body-bytes", nil, []string{"--max-request-body-bytes", "-5"}, "--max-request-body-bytes"},
		{"NaN --trace-sample-ratio", nil, []string{"--trace-sample-ratio", "NaN"}, "--trace-sample-ratio"},
		{"--xds-address without a port", nil, []string{"--xds-address", "127.0.0.1"}, "--xds-address"},
		{"--otlp-endpoint port 99999", nil, []string{"--otlp-endpoint", "127.0.0.1:99999"}, "--otlp-endpoint"},
		// Refused by sidecar.Listen before 2026-12-07: exit 1, a JSON log line.
		{"bad --server", nil, []string{"--server=foo"}, `--server "foo": want lean or std`},
		{"empty --server", nil, []string{"--server="}, `--server "": want lean or std`},
		{"bad MINIMESH_SERVER", []string{"MINIMESH_SERVER=Lean"}, nil, `--server "Lean"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			args := append([]string{"run", "--outbound-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}, c.args...)
			cmd := exec.CommandContext(ctx, binary, args...)
			cmd.Env = childEnv(c.env...)
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 {
				t.Fatalf("exit: %v, want status 2\n%s", err, out)
			}
			if !strings.Contains(string(out), c.want) {
				t.Errorf("message does not name %s:\n%s", c.want, out)
			}
		})
	}
}

func TestSIGTERMDrains(t *testing.T) {
	u := newUpstream(t)
	u.Delay.Store(int64(time.Second))
	p := local(t, "--resolve", geo+"="+u.addr())

	res := proxytest.GetAsync(p.client(), "http://"+geo+"/")
	u.AwaitRequest(t, 5*time.Second)
	sent := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Unready at once, while the request is still in flight: told by
	// its answer not having come yet (the upstream holds it 1 s), not by
	// a bound on the time, which a loaded machine stretches.
	var code int
	if !proxytest.Poll(5*time.Second, 5*time.Millisecond, func() bool {
		code, _ = p.adminGet("/ready")
		return code == 503
	}) {
		t.Fatalf("/ready still %d %v after SIGTERM", code, time.Since(sent))
	}
	select {
	case x := <-res:
		t.Fatalf("/ready answered 503 only once the request in flight had ended (%+v), %v after SIGTERM", x, time.Since(sent))
	default:
	}
	select {
	case x := <-res:
		if x.Err != nil || x.Code != 200 || x.Body != "hello from geo\n" {
			t.Fatalf("in-flight request: %+v, want 200", x)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("in-flight request did not complete")
	}
	if code := p.wait(t, 5*time.Second); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	if took := time.Since(sent); took > 3*time.Second {
		t.Errorf("exit took %v after SIGTERM, with a 1s request in flight", took)
	}
}

func TestSIGTERMDrainTimeout(t *testing.T) {
	u := newUpstream(t)
	u.Delay.Store(int64(10 * time.Second))
	p := local(t, "--resolve", geo+"="+u.addr(), "--drain-timeout", "300ms")
	res := proxytest.GetAsync(p.client(), "http://"+geo+"/")
	u.AwaitRequest(t, 5*time.Second)
	sent := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 5*time.Second); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	if took := time.Since(sent); took > 2*time.Second {
		t.Errorf("exit took %v with --drain-timeout 300ms, want ~300ms", took)
	}
	select {
	case <-res:
	case <-time.After(5 * time.Second):
		t.Error("the request cut off by the drain did not end")
	}
}

func TestBadPolicyAtStartup(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "geo.yaml")
	proxytest.WriteFile(t, file, proxytest.BrokenPolicy)
	p := local(t, "--policy-dir", dir)
	if code, body := p.adminGet("/ready"); code != 200 {
		t.Fatalf("/ready with a bad policy: %d %s", code, body)
	}
	var found bool
	for _, m := range p.log.logLines() {
		e, _ := m["error"].(string)
		if m["level"] == "ERROR" && strings.Contains(e, file+":7:26:") {
			found = true
		}
	}
	if !found {
		t.Errorf("no JSON ERROR line naming %s:7:26 in stderr:\n%s", file, p.log.String())
	}
	// Defaults serve: the config shows no policy of the file, and the error.
	code, body := p.adminGet("/debug/config")
	if code != 200 || !strings.Contains(body, file+":7:26") {
		t.Errorf("/debug/config: %d %s", code, body)
	}
}

// TestListenerInUse: an address that cannot be bound stops the sidecar
// with status 1 and says which listener.
func TestListenerInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, c := range []struct{ flag, want string }{{"--outbound-addr", "outbound listener"}, {"--admin-addr", "admin listener"}} {
		args := []string{"run", "--outbound-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", c.flag, ln.Addr().String()}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, binary, args...)
		cmd.Env = childEnv()
		out, err := cmd.CombinedOutput()
		cancel()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
			t.Errorf("%s in use: %v, want status 1\n%s", c.flag, err, out)
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("%s in use: message does not say %q:\n%s", c.flag, c.want, out)
		}
	}
}

// TestResolveHelp: --resolve's help names the form Set takes, ADDR with
// its port; it read HOST:PORT=ADDR, "like curl --resolve", whose ADDR has
// none, and nominatim-service:8000=127.0.0.1 was refused.
func TestResolveHelp(t *testing.T) {
	var out, help bytes.Buffer
	if code := run([]string{"run", "-h"}, &out, &help); code != 0 {
		t.Fatalf("run -h: exit %d\n%s", code, help.String())
	}
	_, usage, _ := strings.Cut(help.String(), "-resolve value\n")
	usage, _, _ = strings.Cut(usage, "\n  -")
	if !strings.Contains(usage, "HOST:PORT=ADDR:PORT") || !strings.Contains(usage, "not curl --resolve") {
		t.Errorf("--resolve's help does not name HOST:PORT=ADDR:PORT and how it differs from curl's:\n%s", usage)
	}
	for _, c := range []struct {
		v  string
		ok bool
	}{
		{"nominatim-service:8000=127.0.0.1:9", true},
		{"nominatim-service:8000=127.0.0.1", false}, // curl's ADDR
		{"nominatim-service:8000:127.0.0.1", false}, // curl's form
	} {
		err := resolveFlag{}.Set(c.v)
		if (err == nil) != c.ok || (err != nil && !strings.Contains(err.Error(), "HOST:PORT=ADDR:PORT")) {
			t.Errorf("Set(%q) = %v, want ok %v", c.v, err, c.ok)
		}
	}
}

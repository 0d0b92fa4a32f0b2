package main

import (
	"context"
	"debug/buildinfo"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/internal/freeport"
)

// target is an address the load generator sends its requests to: the
// upstream itself, or a proxy in front of it.
type target struct {
	key     string     // flag name: direct, minimesh, nginx, haproxy
	name    string     // as the report shows it
	addr    string     // host:port the load generator connects to
	proc    *proc.Proc // the proxy; nil for direct
	admin   string     // the sidecar's admin address
	version string
	config  string // how it was configured, for the report

	// Set by -transparent (netns.go); zero values are the loopback
	// scenarios' defaults.
	host    string       // Host header; "": the upstream
	netns   string       // network namespace the load generator runs in; "": the harness's
	client  *http.Client // for checks and the admin port; nil: probe
	base    string       // key of the target its added latency is measured against; "": direct
	qps     float64      // its fixed rate; 0: -qps
	newConn bool         // a new connection per request (fortio -keepalive=false)

	// Set by -http-proxy (sweep.go): the load is fortio's standard
	// client sending absolute-form requests through HTTP_PROXY.
	viaProxy *proxyPath
}

// sweeps reports whether t runs at every -sweep rate and at the maximum
// rate: the loopback targets with the default client.
func (t *target) sweeps() bool { return t.netns == "" && t.qps == 0 && t.viaProxy == nil }

// baseKey is the key of the target t's added latency is measured against.
func (t *target) baseKey() string {
	if t.base == "" {
		return keyDirect
	}
	return t.base
}

// httpClient is the client that reaches t's addresses.
func (t *target) httpClient() *http.Client {
	if t.client == nil {
		return probe
	}
	return t.client
}

const (
	keyDirect   = "direct"
	keyMinimesh = "minimesh"
	keyNginx    = "nginx"
	keyHAProxy  = "haproxy"
	keyCaddy    = "caddy"
)

var allKeys = []string{keyDirect, keyMinimesh, keyNginx, keyHAProxy, keyCaddy}

// keyNginxLog is nginx doing the sidecar's work besides forwarding, an
// access log line and a request ID per request: the like-for-like peer of
// the CPU target, which the sidecar meets with its access log on.
const keyNginxLog = "nginx-log"

// keyHAProxy1 is HAProxy with one thread: the sidecar's own budget as
// injected (one P under the chart's one-core limit), beside HAProxy with
// -peer-workers threads, in the same run.
const keyHAProxy1 = "haproxy-1"

// extraKeys are the scenarios that run only when -scenarios names them.
var extraKeys = []string{keyNginxLog, keyHAProxy1, keyRelay, keyEpoll, keyEpollRaw}

// cleanEnv is the harness's environment without the variables that would
// change how a child behaves behind its back: MINIMESH_* (each sidecar flag
// reads one) and HTTP proxy settings. extra is added at the end.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "MINIMESH_"),
			strings.EqualFold(k, "HTTP_PROXY"), strings.EqualFold(k, "HTTPS_PROXY"),
			strings.EqualFold(k, "ALL_PROXY"), strings.EqualFold(k, "NO_PROXY"):
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// startUpstream starts fortio's echo server, answering every request with
// 200 and a body of bodySize bytes, and returns its address and process.
func startUpstream(ctx context.Context, ps *procs, fortio, dir string, bodySize int) (string, *proc.Proc, error) {
	addr, err := freeport.Addr()
	if err != nil {
		return "", nil, err
	}
	data := filepath.Join(dir, "upstream")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return "", nil, err
	}
	p, err := ps.start("upstream (fortio server)", fortio, upstreamArgs(addr, data, bodySize), cleanEnv(), dir)
	if err != nil {
		return "", nil, err
	}
	return addr, p, waitOK(ctx, p, "http://"+addr+"/", "", 10*time.Second)
}

// upstreamArgs is fortio's command line for an echo server on listen.
func upstreamArgs(listen, data string, bodySize int) []string {
	return []string{"server",
		"-http-port", listen,
		"-grpc-port", "disabled", "-redirect-port", "disabled",
		"-tcp-port", "disabled", "-udp-port", "disabled",
		"-ui-path", "", "-echo-debug-path", "",
		"-data-dir", data,
		"-echo-server-default-params", fmt.Sprintf("size=%d", bodySize),
		"-quiet",
	}
}

// startSidecar starts bin/minimesh-proxy with a policy for the upstream
// and waits for its /ready.
func startSidecar(ctx context.Context, ps *procs, bin, dir, upstream string, o *options) (*target, error) {
	return startSidecarVariant(ctx, ps, bin, dir, upstream, o, "", "")
}

// startSidecarVariant starts a sidecar with more arguments; name "" is
// the main one.
func startSidecarVariant(ctx context.Context, ps *procs, bin, dir, upstream string, o *options, name, more string) (*target, error) {
	out, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
	admin, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
	policyDir := filepath.Join(dir, "policies"+name)
	if err := os.MkdirAll(policyDir, 0o755); err != nil {
		return nil, err
	}
	return startSidecarProc(ctx, ps, bin, dir, upstream, o, more, sidecarPlace{
		name: "minimesh-proxy", variant: name, policyDir: policyDir, out: out, admin: admin})
}

// sidecarPlace is where and how a sidecar runs: its listeners, and for
// -transparent the pod namespace and user.
type sidecarPlace struct {
	name       string // process name, for messages
	variant    string // -variant name; "": the main sidecar
	policyDir  string // made, empty
	out, admin string // its outbound and admin addresses
	client     *http.Client
	credential *syscall.Credential
	start      func(*exec.Cmd) error
}

// startSidecarProc starts a sidecar at pl with more arguments (leading
// NAME=value words are its environment) and waits for its /ready.
func startSidecarProc(ctx context.Context, ps *procs, bin, dir, upstream string, o *options, more string, pl sidecarPlace) (*target, error) {
	var err error
	name, policyDir, out, admin := pl.variant, pl.policyDir, pl.out, pl.admin
	policy := []byte(sidecarPolicy(upstream))
	if o.policyFile != "" {
		if policy, err = os.ReadFile(o.policyFile); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(policyDir, "bench.yaml"), policy, 0o644); err != nil {
		return nil, err
	}
	// The upstream by name, for -http-proxy's absolute-form URLs, and a
	// dead destination whose breaker opens at the first failure, for the
	// fast-fail runs.
	if err := os.WriteFile(filepath.Join(policyDir, "bench-name.yaml"),
		[]byte(sidecarPolicyNamed("bench-upstream-by-name", proxyHost)), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(policyDir, "bench-dead.yaml"), []byte(deadPolicy()), 0o644); err != nil {
		return nil, err
	}
	args := []string{"run",
		"--outbound-addr", out,
		"--admin-addr", admin,
		"--policy-dir", policyDir,
		"--log-level", "error",
		"--resolve", proxyHostPort(upstream) + "=" + upstream,
		"--resolve", deadHostPort + "=" + deadAddr(),
	}
	if o.traceRatio > 0 && o.otlp != "" && pl.start == nil {
		// As the targets are measured: spans at this ratio, sent
		// to a real collector. Before -extra-args and a variant's own
		// arguments, which may change them (the last of a flag wins).
		args = append(args, "--otlp-endpoint", o.otlp, "--trace-sample-ratio", strconv.FormatFloat(o.traceRatio, 'g', -1, 64))
	}
	args = append(args, strings.Fields(o.extraArgs)...)
	argc := len(args)
	env := strings.Fields(o.sidecarEnv)
	words := strings.Fields(more)
	if len(words) > 0 && strings.HasPrefix(words[0], "@") {
		// A leading @PATH is the variant's binary: another build of the
		// sidecar, measured side by side with this one.
		bin, words = words[0][1:], words[1:]
		if err := checkNoCgo(bin); err != nil {
			return nil, fmt.Errorf("variant %s: %w", name, err)
		}
	}
	for _, f := range words {
		// Leading NAME=value words are the variant's environment,
		// e.g. GOMAXPROCS=1 for a sidecar with a CPU limit of one core.
		if k, _, ok := strings.Cut(f, "="); ok && !strings.HasPrefix(f, "-") && strings.ToUpper(k) == k && len(args) == argc {
			// It overrides -sidecar-env's value of the same name.
			env = slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, k+"=") })
			env = append(env, f)
			continue
		}
		args = append(args, f)
	}
	p, err := ps.startWith(pl.name, bin, args, proc.Options{Env: cleanEnv(env...), Dir: dir,
		Credential: pl.credential, Start: pl.start})
	if err != nil {
		return nil, err
	}
	c := pl.client
	if c == nil {
		c = probe
	}
	if err := waitOKVia(ctx, c, p, "http://"+admin+"/ready", "", 15*time.Second); err != nil {
		return nil, err
	}
	key, tname := keyMinimesh, "minimesh-proxy"
	if name != "" {
		key, tname = keyMinimesh+":"+name, "minimesh-proxy ("+name+")"
	}
	t := &target{key: key, name: tname, addr: out, proc: p, admin: admin, client: pl.client,
		version: binaryVersion(bin),
		config:  "`minimesh-proxy " + strings.Join(args, " ") + "`"}
	if len(env) > 0 {
		t.config += " with `" + strings.Join(env, " ") + "`"
	}
	if o.policyFile != "" {
		t.config += ", policy " + o.policyFile
	} else {
		t.config += ", policy: timeout, retries and circuit breaker for the upstream"
	}
	return t, nil
}

// toolArg is the first argument that prints the path of the tool named
// after it as the harness finds it (tools.Find), and nothing else.
const toolArg = "tool"

// peerConfigArg is the first argument that prints a peer's configuration
// as the harness runs it, nginx and HAProxy with one worker or thread: `peer-config
// nginx|nginx-log|haproxy|caddy DIR LISTEN UPSTREAM` (Caddy's ignores DIR) (scripts/instructions.sh
// counts the peers' instructions per request with the same
// configurations; nginx-log is keyNginxLog's: an access log line and the
// request ID, the sidecar's work besides forwarding).
const peerConfigArg = "peer-config"

// peerConfig is the configuration peerConfigArg prints.
func peerConfig(peer, dir, listen, upstream string) (string, error) {
	switch peer {
	case "nginx", "nginx-log":
		return nginxConfig(dir, listen, upstream, 1, peerConns, peer == "nginx-log"), nil
	case "haproxy":
		return haproxyConfig(listen, upstream, 1, peerConns), nil
	case "caddy":
		return caddyConfig(listen, upstream), nil
	}
	return "", fmt.Errorf("peer-config: no peer %q (nginx, nginx-log, haproxy, caddy)", peer)
}

// policyArg is the first argument that prints sidecarPolicy for the
// upstream HOST:PORT that follows it, and nothing else.
const policyArg = "policy"

// sidecarPolicy is a policy with every feature on for the upstream, so
// that the sidecar does its full work on each request. The timeouts are
// generous: a stall of the shared machine must not turn into 504s that
// open the breaker (the work per request is the same whatever the values),
// and should the breaker open anyway it fails a few seconds of requests,
// not every run after it.
func sidecarPolicy(upstream string) string { return sidecarPolicyNamed("bench-upstream", upstream) }

// sidecarPolicyNamed is sidecarPolicy for service, named name.
func sidecarPolicyNamed(name, service string) string {
	return `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: ` + name + `}
spec:
  service: "` + service + `"
  timeout: 20s
  retries:
    attempts: 2
    perTryTimeout: 10s
    retryOn: [connect-failure, "502", "503", "504"]
    backoff: {base: 25ms, max: 250ms}
    budget: {ratio: 0.2, minPerSecond: 10}
  circuitBreaker:
    consecutiveFailures: 5
    openTimeout: 5s
    halfOpenRequests: 2
    failOn: [5xx, connect-failure, timeout]
`
}

// checkNoCgo refuses a sidecar built with cgo: linked to the C library,
// it maps libc's and the dynamic loader's pages, 1.5-2 MB more RSS than
// the same code built as make build ships it (CGO_ENABLED=0): 14.7-15.1
// against 13.2-13.4 MB at the peak, 2026-12-02 (docs/benchmarks.md).
// Builds compared side by side (-variant NAME=@PATH) would otherwise
// differ by their linking, not their code.
func checkNoCgo(path string) error {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, s := range bi.Settings {
		if s.Key == "CGO_ENABLED" && s.Value == "1" {
			return fmt.Errorf("%s is built with cgo, which adds 1.5-2 MB of the C library's pages to the RSS measured; "+
				"build it as make build does: CGO_ENABLED=0 go build -trimpath ./proxy/cmd/minimesh-proxy", path)
		}
	}
	return nil
}

// binaryVersion says how a Go binary was built: its Go version and the
// minimesh version linked into it.
func binaryVersion(path string) string {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	v := "dev"
	for _, s := range bi.Settings {
		if s.Key != "-ldflags" {
			continue
		}
		for _, f := range strings.Fields(s.Value) {
			if after, ok := strings.CutPrefix(f, "github.com/minimesh/minimesh/wellknown.Version="); ok {
				v = after
			}
		}
	}
	return v + ", " + bi.GoVersion
}

// nginxConfig proxies every request to the upstream over a pool of
// keep-alive connections. With logged, it also does what the sidecar
// does by default besides forwarding (keyNginxLog): an access log line
// per request, JSON with the sidecar's fields where nginx has them,
// buffered as the sidecar's (32 KiB, written at least once a second);
// and a request ID, the app's or a new one, sent upstream.
func nginxConfig(dir, listen, upstream string, workers, conns int, logged bool) string {
	logConf, idConf := "access_log off;", ""
	if logged {
		logConf = fmt.Sprintf(`map $http_x_request_id $mm_request_id {
        "" $request_id;
        default $http_x_request_id;
    }
    log_format mm escape=json '{"time":"$time_iso8601","request_id":"$mm_request_id",'
        '"destination":"$proxy_host","method":"$request_method","path":"$uri","status":$status,'
        '"duration_s":$request_time,"upstream_s":"$upstream_response_time",'
        '"bytes_in":$request_length,"bytes_out":$bytes_sent}';
    access_log %s/access.log mm buffer=32k flush=1s;`, dir)
		idConf = "\n            proxy_set_header X-Request-ID $mm_request_id;"
	}
	return fmt.Sprintf(`# generated by e2e/bench
worker_processes %[4]d;
worker_rlimit_nofile %[6]d;
daemon off;
master_process on;
pid %[1]s/nginx.pid;
error_log stderr error;
events { worker_connections %[5]d; }
http {
    %[7]s
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    upstream bench_upstream {
        server %[3]s;
        keepalive 64;
    }
    server {
        listen %[2]s;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;%[8]s
        }
    }
}
`, dir, listen, upstream, workers, conns, conns+1024, logConf, idConf)
}

// peerConns is the most connections of nginx's workers and of HAProxy
// in the measured runs (-idle-conns starts instances with more).
const peerConns = 4096

// startNginx starts nginx as the peer keyNginx, or with logged as
// keyNginxLog.
func startNginx(ctx context.Context, ps *procs, nginx, dir, upstream string, workers, conns int, logged bool) (*target, error) {
	listen, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
	key, name, what := keyNginx, "nginx", "access log off"
	if logged {
		key, name, what = keyNginxLog, "nginx (log, ID)", "a JSON access log line per request (buffer=32k flush=1s, as the sidecar's) "+
			"and `X-Request-ID` (the app's or `$request_id`) sent upstream: the sidecar's work besides forwarding"
	}
	d := filepath.Join(dir, key)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(d, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConfig(d, listen, upstream, workers, conns, logged)), 0o644); err != nil {
		return nil, err
	}
	p, err := ps.start("nginx", nginx, []string{"-e", "stderr", "-p", d, "-c", conf}, cleanEnv(), d)
	if err != nil {
		return nil, err
	}
	if err := waitOK(ctx, p, "http://"+listen+"/", upstream, 10*time.Second); err != nil {
		return nil, err
	}
	v, _ := runCmd(ctx, nginx, "-v")
	return &target{key: key, name: name, addr: listen, proc: p,
		version: strings.TrimPrefix(v, "nginx version: "),
		config: fmt.Sprintf("`proxy_pass` to an `upstream` with `keepalive 64`, HTTP/1.1, "+
			"%d worker processes, %s", workers, what)}, nil
}

// configDir makes the directory of a run's generated configs, readable
// by nginx's workers (they drop root); cleanup removes it unless keep.
func configDir(prefix string, keep bool) (dir string, cleanup func(), err error) {
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	if keep {
		logf("generated configs kept in %s", dir)
		return dir, func() {}, nil
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}

// haproxyConfig proxies every request to the upstream, reusing idle server
// connections across client connections.
func haproxyConfig(listen, upstream string, threads, conns int) string {
	return haproxyConfigProto(listen, upstream, threads, conns, "")
}

// haproxyConfigProto is haproxyConfig with a bind and server option of
// both sides' protocol: "" for HTTP/1.1, " proto h2" for h2c with prior
// knowledge (-h2).
func haproxyConfigProto(listen, upstream string, threads, conns int, proto string) string {
	limits := ""
	if conns > peerConns {
		// -idle-conns: HAProxy wants two descriptors per connection
		// (client and server side), more than a container's open-file
		// limit may allow; idle client connections need one each.
		limits = "\n    no strict-limits"
	}
	return fmt.Sprintf(`# generated by e2e/bench
global
    nbthread %[3]d
    maxconn %[4]d%[5]s
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend bench
    bind %[1]s%[6]s
    default_backend upstream
backend upstream
    server upstream %[2]s%[6]s
`, listen, upstream, threads, conns, limits, proto)
}

func startHAProxy(ctx context.Context, ps *procs, haproxy, dir, upstream string, threads, conns int) (*target, error) {
	return startHAProxyAs(ctx, ps, haproxy, dir, upstream, threads, conns, keyHAProxy)
}

// startHAProxyAs is startHAProxy as the target key (keyHAProxy1: with its
// own name and directory).
func startHAProxyAs(ctx context.Context, ps *procs, haproxy, dir, upstream string, threads, conns int, key string) (*target, error) {
	listen, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
	d := filepath.Join(dir, key)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(d, "haproxy.cfg")
	if err := os.WriteFile(conf, []byte(haproxyConfig(listen, upstream, threads, conns)), 0o644); err != nil {
		return nil, err
	}
	p, err := ps.start("haproxy", haproxy, []string{"-db", "-q", "-f", conf}, cleanEnv(), d)
	if err != nil {
		return nil, err
	}
	if err := waitOK(ctx, p, "http://"+listen+"/", upstream, 10*time.Second); err != nil {
		return nil, err
	}
	v, _ := runCmd(ctx, haproxy, "-v")
	v, _, _ = strings.Cut(v, "\n")
	v, _, _ = strings.Cut(strings.TrimPrefix(v, "HAProxy version "), " ")
	name := "haproxy"
	if key != keyHAProxy {
		name = fmt.Sprintf("haproxy (%d thread)", threads)
	}
	return &target{key: key, name: name, addr: listen, proc: p, version: v,
		config: fmt.Sprintf("`mode http`, `http-reuse always`, keep-alive, %d threads, no logging", threads)}, nil
}

// probe is the HTTP client of the readiness checks; it never uses a proxy
// from the environment.
var probe = &http.Client{
	Timeout:   2 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// getVia sends one GET to url with client c and the given Host header
// (none: the URL's), and returns the response with its body read.
func getVia(ctx context.Context, c *http.Client, url, host string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if host != "" {
		req.Host = host
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp, err
}

// getBody GETs url and returns the body of a 200 response.
func getBody(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s", resp.Status)
	}
	return string(b), err
}

// waitOK polls url until it answers 200, p exits, or timeout passes.
func waitOK(ctx context.Context, p *proc.Proc, url, host string, timeout time.Duration) error {
	return waitOKVia(ctx, probe, p, url, host, timeout)
}

// waitOKVia is waitOK with client c.
func waitOKVia(ctx context.Context, c *http.Client, p *proc.Proc, url, host string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		if err := p.Alive(); err != nil {
			return err
		}
		resp, err := getVia(ctx, c, url, host)
		switch {
		case err == nil && resp.StatusCode == http.StatusOK:
			return nil
		case err == nil:
			last = resp.Status
		default:
			last = err.Error()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: GET %s (Host %q) did not answer 200 within %v (last: %s); its output:\n%s",
				p.Name, url, host, timeout, last, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

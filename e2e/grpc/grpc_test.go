// Package grpc tests gRPC through the built sidecar (docs/grpc.md) with
// real parts: grpc-go servers (the health service, and one that fails or
// is slow on purpose), a grpc-go client and Python's grpcio (Debian
// python3-grpcio) speaking h2c prior knowledge to the sidecar's outbound
// listener, a grpc-go client tunnelling through HTTPS_PROXY (CONNECT,
// tunnel_test.go), and h2load (Debian nghttp2-client) for load.
package grpc

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/jaeger"
	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/internal/freeport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// The destination the apps of these tests call, as a Service would be.
const svc = "health-service:50051"

func TestMain(m *testing.M) {
	code := m.Run()
	tools.RemoveBuilt()
	os.Exit(code)
}

type sidecar struct {
	Outbound, Admin string
}

// startSidecar runs minimesh-proxy with policies (YAML, may be empty),
// svc resolved to upstream and extra flags.
func startSidecar(t *testing.T, upstream, policies string, extra ...string) *sidecar {
	t.Helper()
	// bin/minimesh-proxy from MINIMESH_BIN_DIR (make build), or a build of
	// this tree.
	bin := tools.BuiltT(t, "minimesh-proxy", "./proxy/cmd/minimesh-proxy")
	var s *sidecar
	// On other ports again if one was taken before the sidecar bound it.
	if _, err := freeport.Start(2, func(addrs []string) error {
		s = &sidecar{Outbound: addrs[0], Admin: addrs[1]}
		args := []string{"run", "--outbound-addr", s.Outbound, "--admin-addr", s.Admin,
			"--service-name", "grpc-e2e", "--log-level", "warn", "--access-log", "off",
			"--resolve", svc + "=" + upstream}
		if policies != "" {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "policies.yaml"), []byte(policies), 0o644); err != nil {
				t.Fatal(err)
			}
			args = append(args, "--policy-dir", dir)
		}
		args = append(args, extra...)
		p := proc.StartT(t, "minimesh-proxy", bin, args, proc.Options{Env: childEnv()})
		return p.WaitReady(15*time.Second, proc.GetOK("http://"+s.Admin+"/ready"))
	}); err != nil {
		t.Fatal(err)
	}
	return s
}

// childEnv is the environment without proxy settings and MINIMESH_
// variables: grpc-go and grpcio honour https_proxy and http_proxy.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "MINIMESH_"), strings.EqualFold(k, "http_proxy"),
			strings.EqualFold(k, "https_proxy"), strings.EqualFold(k, "no_proxy"), strings.EqualFold(k, "grpc_proxy"):
			continue
		}
		env = append(env, kv)
	}
	return env
}

// metric sums the sidecar's samples of name whose labels include every
// name=value pair of labels.
func (s *sidecar) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + s.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
next:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(line, labels[i]+`="`+labels[i+1]+`"`) {
				continue next
			}
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// server answers Check with its fail code (OK when 0) after its delay,
// ignoring the call's deadline, as a stuck server does.
type server struct {
	healthpb.UnimplementedHealthServer
	hits  atomic.Int64
	fail  codes.Code
	delay time.Duration
	// only, when not 0, limits the failures to the first only calls.
	only int64
}

func (s *server) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	n := s.hits.Add(1)
	time.Sleep(s.delay)
	if s.fail != codes.OK && (s.only == 0 || n <= s.only) {
		return nil, status.Error(s.fail, "failing on purpose")
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func serve(t *testing.T, hs healthpb.HealthServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

// client is a grpc-go channel to the sidecar, h2c with prior knowledge,
// naming the destination in :authority: how an app's channel reaches a
// Service through the sidecar's explicit listener.
func client(t *testing.T, s *sidecar) healthpb.HealthClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+s.Outbound, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(svc))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return healthpb.NewHealthClient(cc)
}

func call(c healthpb.HealthClient) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
	return time.Since(start), err
}

const breakerPolicy = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: health}
spec:
  service: health-service:50051
  timeout: 400ms
  circuitBreaker: {consecutiveFailures: 3, openTimeout: 30s}
`

func TestCallsSucceed(t *testing.T) {
	s := startSidecar(t, serve(t, health.NewServer()), "")
	c := client(t, s)
	for i := 0; i < 5; i++ {
		if _, err := call(c); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if got := s.metric(t, "minimesh_grpc_requests_total", "destination", svc, "grpc_code", "OK"); got != 5 {
		t.Errorf("minimesh_grpc_requests_total{grpc_code=OK} = %v, want 5", got)
	}
}

// TestBreakerOpensOnUnavailable: the third UNAVAILABLE opens the breaker
// under the default failOn, and the fourth call is answered at once by
// the sidecar in gRPC without reaching the server.
func TestBreakerOpensOnUnavailable(t *testing.T) {
	up := &server{fail: codes.Unavailable}
	s := startSidecar(t, serve(t, up), breakerPolicy)
	c := client(t, s)
	for i := 1; i <= 3; i++ {
		if _, err := call(c); status.Code(err) != codes.Unavailable {
			t.Fatalf("call %d: %v, want the server's Unavailable", i, err)
		}
	}
	took, err := call(c)
	msg := status.Convert(err).Message()
	if status.Code(err) != codes.Unavailable || !strings.Contains(msg, "minimesh") || !strings.Contains(msg, svc) {
		t.Fatalf("call 4: %v, want Unavailable from minimesh naming %s", err, svc)
	}
	if took > 500*time.Millisecond {
		t.Errorf("the fast fail took %v", took)
	}
	if n := up.hits.Load(); n != 3 {
		t.Errorf("the server saw %d calls, want 3", n)
	}
	if got := s.metric(t, "minimesh_grpc_requests_total", "destination", svc, "grpc_code", "UNAVAILABLE"); got != 4 {
		t.Errorf("minimesh_grpc_requests_total{grpc_code=UNAVAILABLE} = %v, want 4", got)
	}
	if got := s.metric(t, "minimesh_circuit_breaker_rejected_total", "destination", svc); got != 1 {
		t.Errorf("minimesh_circuit_breaker_rejected_total = %v, want 1", got)
	}
}

// TestHalfOpenProbeCloses: once the server is healthy again, after
// openTimeout the breaker lets one probe through (every call before it is
// the sidecar's fast fail, never the server's), the probe's OK closes it,
// and calls flow again.
func TestHalfOpenProbeCloses(t *testing.T) {
	up := &server{fail: codes.Unavailable, only: 3}
	s := startSidecar(t, serve(t, up), strings.Replace(breakerPolicy,
		"{consecutiveFailures: 3, openTimeout: 30s}", "{consecutiveFailures: 3, openTimeout: 1s, halfOpenRequests: 1}", 1))
	c := client(t, s)
	for i := 1; i <= 3; i++ {
		if _, err := call(c); status.Code(err) != codes.Unavailable {
			t.Fatalf("call %d: %v, want the server's Unavailable", i, err)
		}
	}
	fastFails := 0
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, err := call(c)
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "minimesh") {
			t.Fatalf("while open: %v, want minimesh's Unavailable", err)
		}
		fastFails++
		if time.Now().After(deadline) {
			t.Fatal("no probe got through in 10 s (openTimeout 1s)")
		}
	}
	if n := up.hits.Load(); n != 4 || fastFails == 0 {
		t.Fatalf("the server saw %d calls after %d fast fails, want 4 (three failures, one probe) after at least one", n, fastFails)
	}
	for i := 0; i < 3; i++ {
		if _, err := call(c); err != nil {
			t.Fatalf("after the probe: %v, want OK (closed)", err)
		}
	}
	if got := s.metric(t, "minimesh_circuit_breaker_transitions_total", "destination", svc, "from", "half-open", "to", "closed"); got != 1 {
		t.Errorf("half-open → closed transitions %v, want 1", got)
	}
}

// TestSlowServerDeadlineExceeded: a server slower than the policy's
// timeout gives the client DEADLINE_EXCEEDED from the sidecar.
func TestSlowServerDeadlineExceeded(t *testing.T) {
	up := &server{delay: 2 * time.Second}
	s := startSidecar(t, serve(t, up), breakerPolicy)
	c := client(t, s)
	took, err := call(c)
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(status.Convert(err).Message(), "minimesh") {
		t.Fatalf("%v, want DeadlineExceeded from minimesh", err)
	}
	if took > 1500*time.Millisecond {
		t.Errorf("took %v, want about the policy's 400ms", took)
	}
	if got := s.metric(t, "minimesh_grpc_requests_total", "destination", svc, "grpc_code", "DEADLINE_EXCEEDED"); got != 1 {
		t.Errorf("minimesh_grpc_requests_total{grpc_code=DEADLINE_EXCEEDED} = %v, want 1", got)
	}
}

// pyClient calls Check n times with Python's grpcio through the sidecar
// (h2c, :authority set by grpc.default_authority) and prints each call's
// status code name, one a line. An empty HealthCheckRequest is zero bytes
// on the wire: no generated code is needed.
const pyClient = `
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1], options=[("grpc.default_authority", sys.argv[2]), ("grpc.enable_http_proxy", 0)])
check = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
for _ in range(int(sys.argv[3])):
    try:
        check(b"", timeout=10)
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name, e.details())
`

// TestPythonGRPCIO: grpcio's calls are counted and its breaker answer is
// UNAVAILABLE from minimesh.
func TestPythonGRPCIO(t *testing.T) {
	if err := exec.Command("/usr/bin/python3", "-c", "import grpc").Run(); err != nil {
		proc.Unmet(t, "Debian's python3 with grpcio not installed (Debian python3-grpcio; make tools): %v", err)
	}
	up := &server{fail: codes.Unavailable}
	s := startSidecar(t, serve(t, up), breakerPolicy)
	cmd := exec.Command("/usr/bin/python3", "-c", pyClient, s.Outbound, svc, "5")
	cmd.Env = childEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python3 grpcio client: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 5 {
		t.Fatalf("grpcio printed %q, want 5 lines", out)
	}
	for i, l := range lines {
		if !strings.HasPrefix(l, "UNAVAILABLE") {
			t.Errorf("call %d: %s, want UNAVAILABLE", i+1, l)
		}
		if fromSidecar := strings.Contains(l, "minimesh"); fromSidecar != (i >= 3) {
			t.Errorf("call %d: %s: from the sidecar %v, want %v", i+1, l, fromSidecar, i >= 3)
		}
	}
	if n := up.hits.Load(); n != 3 {
		t.Errorf("the server saw %d calls, want 3", n)
	}
	if got := s.metric(t, "minimesh_grpc_requests_total", "destination", svc, "grpc_code", "UNAVAILABLE"); got != 5 {
		t.Errorf("minimesh_grpc_requests_total{grpc_code=UNAVAILABLE} = %v, want 5", got)
	}
}

// TestH2Load drives h2c load through the sidecar with h2load: every
// request answered, none failed.
func TestH2Load(t *testing.T) {
	h2load := proc.NeedTool(t, "h2load")
	// A plain HTTP/2 upstream (h2c), since h2load speaks HTTP/2 but not
	// gRPC's framing.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	var hits atomic.Int64
	up := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = w.Write([]byte("ok\n"))
	})}
	go func() { _ = up.Serve(ln) }()
	t.Cleanup(func() { up.Close() })
	s := startSidecar(t, ln.Addr().String(), "")
	const n = 2000
	// -c 4 connections, -m 10 streams each; :authority names the
	// destination.
	cmd := exec.Command(h2load, "-n", strconv.Itoa(n), "-c", "4", "-m", "10", "-H", ":authority: "+svc, "http://"+s.Outbound+"/")
	cmd.Env = childEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("h2load: %v\n%s", err, out)
	}
	want := fmt.Sprintf("requests: %d total, %d started, %d done, %d succeeded, 0 failed, 0 errored", n, n, n, n)
	if !strings.Contains(string(out), want) {
		t.Errorf("h2load: want %q in\n%s", want, out)
	}
	if hits.Load() != n {
		t.Errorf("the upstream saw %d requests, want %d", hits.Load(), n)
	}
	if got := s.metric(t, "minimesh_requests_total", "destination", svc, "code", "200"); got != n {
		t.Errorf("minimesh_requests_total{code=200} = %v, want %d", got, n)
	}
	t.Logf("h2load through the sidecar:\n%s", out)
}

// TestSpansInJaeger: a gRPC call's span in the real Jaeger follows the
// OpenTelemetry RPC conventions (name $service/$method, rpc.system,
// rpc.service, rpc.method, rpc.grpc.status_code) and a failed call is an
// error span.
func TestSpansInJaeger(t *testing.T) {
	j := jaeger.StartT(t)
	up := &server{fail: codes.Unavailable}
	s := startSidecar(t, serve(t, up), "", "--otlp-endpoint", j.OTLPAddr, "--trace-sample-ratio", "1")
	c := client(t, s)
	var id [16]byte
	_, _ = rand.Read(id[:])
	traceID := hex.EncodeToString(id[:])
	parent := "00f067aa0ba902b7"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+traceID+"-"+parent+"-01")
	if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("%v, want the server's Unavailable", err)
	}
	var span jaeger.Span
	spans, err := j.WaitTraceFunc(traceID, 20*time.Second, func(spans []jaeger.Span) bool {
		for _, sp := range spans {
			if sp.ParentID() == parent {
				span = sp
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("no span of the sidecar in trace %s: %v (%+v)", traceID, err, spans)
	}
	if span.OperationName != "grpc.health.v1.Health/Check" {
		t.Errorf("span name %q, want grpc.health.v1.Health/Check", span.OperationName)
	}
	for k, v := range map[string]string{
		"span.kind": "client", "rpc.system": "grpc", "rpc.service": "grpc.health.v1.Health", "rpc.method": "Check",
		"rpc.grpc.status_code": "14", "error": "true", "server.address": "health-service", "server.port": "50051",
	} {
		if got, ok := span.Tag(k); got != v {
			t.Errorf("tag %s = %q (present %v), want %q; tags %+v", k, got, ok, v, span.Tags)
		}
	}
}

// TestRetryUnavailable: with retryOn: [grpc-unavailable] a unary call
// that fails with UNAVAILABLE is sent again and succeeds, for grpc-go and
// for grpcio (docs/grpc.md, "Retries").
func TestRetryUnavailable(t *testing.T) {
	const policy = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: health}
spec:
  service: health-service:50051
  retries: {attempts: 2, retryOn: [connect-failure, grpc-unavailable], backoff: {base: 1ms, max: 5ms}}
`
	up := &server{fail: codes.Unavailable, only: 1}
	s := startSidecar(t, serve(t, up), policy)
	if _, err := call(client(t, s)); err != nil {
		t.Fatalf("grpc-go: %v, want the retry's OK", err)
	}
	if n := up.hits.Load(); n != 2 {
		t.Errorf("the server saw %d calls, want 2", n)
	}
	if got := s.metric(t, "minimesh_retries_total", "destination", svc, "reason", "grpc-unavailable"); got != 1 {
		t.Errorf("minimesh_retries_total{reason=grpc-unavailable} = %v, want 1", got)
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import grpc").Run(); err != nil {
		proc.Unmet(t, "Debian's python3 with grpcio not installed (python3-grpcio; make tools): %v", err)
	}
	up.hits.Store(0)
	cmd := exec.Command("/usr/bin/python3", "-c", pyClient, s.Outbound, svc, "1")
	cmd.Env = childEnv()
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "OK" {
		t.Fatalf("grpcio: %v %q, want OK", err, out)
	}
	if n := up.hits.Load(); n != 2 {
		t.Errorf("the server saw %d calls from grpcio, want 2", n)
	}
}

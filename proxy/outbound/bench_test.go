package outbound

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/leanhttp"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/wellknown"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// BenchmarkProxyGET measures one keep-alive GET through the handler to a
// loopback upstream, client and upstream included, behind net/http's
// server (--server=std): compare with BenchmarkDirectGET for the
// sidecar's share.
func BenchmarkProxyGET(b *testing.B) {
	proxyGET(b, func(h http.Handler) string {
		px := httptest.NewServer(h)
		b.Cleanup(px.Close)
		return px.Listener.Addr().String()
	})
}

// BenchmarkProxyGETLean is BenchmarkProxyGET behind the lean server loop
// (--server=lean, the default).
func BenchmarkProxyGETLean(b *testing.B) {
	proxyGET(b, func(h http.Handler) string { return serveLean(b, h) })
}

// serveLean serves h behind the lean server loop on loopback until the
// benchmark ends, and returns its address.
func serveLean(b testing.TB, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ls := leanhttp.New(&http.Server{Handler: h})
	ls.RequestContext = RequestContext // as the sidecar serves
	go func() { _ = ls.ServeStd() }()
	go func() { _ = ls.Serve(ln) }()
	b.Cleanup(func() { ls.Close() })
	return ln.Addr().String()
}

// proxyGET runs the GET benchmark through the handler behind the server
// serve starts, which returns its address.
func proxyGET(b *testing.B, serve func(http.Handler) string) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	h := New(Config{Metrics: telemetry.New(0), Resolve: map[string]string{"geo-service:8000": u.Host}}, policy.NewTable(nil, "default"))
	proxy := &url.URL{Scheme: "http", Host: serve(h)}
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxy), MaxIdleConnsPerHost: 16}}
	run(b, c, "http://geo-service:8000/")
}

// BenchmarkFastFail measures one keep-alive GET to a destination whose
// breaker is open, answered 503 by the sidecar without dialling: compare
// with BenchmarkDirectGET for what the fast fail adds. The policy is the
// benchmark harness's dead destination (e2e/bench/idle.go).
func BenchmarkFastFail(b *testing.B) {
	dead := refused.Addr(b) // the first request fails to connect
	pols, err := policy.Decode("p.yaml", []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: bench-dead}\n"+
		"spec:\n  service: bench-dead\n  timeout: 5s\n  circuitBreaker: {consecutiveFailures: 1, openTimeout: 1h, halfOpenRequests: 1, failOn: [connect-failure]}\n"))
	if err != nil {
		b.Fatal(err)
	}
	h := New(Config{Metrics: telemetry.New(0), Resolve: map[string]string{"bench-dead:80": dead}}, policy.NewTable(pols, "default"))
	px := httptest.NewServer(h)
	defer px.Close()
	pu, _ := url.Parse(px.URL)
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu), MaxIdleConnsPerHost: 16}}
	get := func() *http.Response {
		resp, err := c.Get("http://bench-dead/")
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := get(); resp.StatusCode != http.StatusBadGateway || resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorConnectFailure {
		b.Fatalf("first request: %s %q, want 502 %s", resp.Status, resp.Header.Get(wellknown.HeaderError), wellknown.ErrorConnectFailure)
	}
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		if resp := get(); resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorCircuitOpen {
			b.Fatalf("%s %q, want the sidecar's 503 %s", resp.Status, resp.Header.Get(wellknown.HeaderError), wellknown.ErrorCircuitOpen)
		}
	}
}

func BenchmarkDirectGET(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))
	defer up.Close()
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	run(b, c, up.URL+"/")
}

func run(b *testing.B, c *http.Client, u string) {
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		resp, err := c.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatal(resp.Status)
		}
	}
}

// reportCPU reports the process's CPU time (user and system, client and
// servers included) per op, which a busy machine disturbs less than the
// wall time: call its result after the loop.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64((cpuTime()-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkTransparentGET is BenchmarkProxyGET for a redirected
// connection: origin-form requests with a Host header, the original
// destination from the connection's context.
func BenchmarkTransparentGET(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	orig := netip.MustParseAddrPort(u.Host)
	h := New(Config{Metrics: telemetry.New(0)}, policy.NewTable(nil, "default"))
	px := httptest.NewUnstartedServer(h.Transparent())
	px.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context { return WithOriginalDst(ctx, orig) }
	px.Start()
	defer px.Close()
	pu, _ := url.Parse(px.URL)
	// The app believes it calls geo-service; iptables sent it to the proxy.
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16, DialContext: func(ctx context.Context, n, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, n, pu.Host)
	}}}
	run(b, c, "http://geo-service:8000/")
}

// BenchmarkGRPCUnary measures one unary gRPC call (grpc.health.v1
// Check) from a grpc-go client through the handler, served as h2c, to a
// grpc-go server over h2c: compare with BenchmarkDirectGRPCUnary for the
// sidecar's share.
func BenchmarkGRPCUnary(b *testing.B) {
	up := grpcUpstream(b)
	h := New(Config{Metrics: telemetry.New(0), Resolve: map[string]string{"health-service:50051": up}}, policy.NewTable(nil, "default"))
	srv := &http.Server{Handler: h, Protocols: ServerProtocols(), HTTP2: ServerHTTP2()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	runGRPC(b, ln.Addr().String(), "health-service:50051")
}

func BenchmarkDirectGRPCUnary(b *testing.B) {
	up := grpcUpstream(b)
	runGRPC(b, up, up)
}

func grpcUpstream(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go func() { _ = s.Serve(ln) }()
	b.Cleanup(s.Stop)
	return ln.Addr().String()
}

func runGRPC(b *testing.B, addr, authority string) {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(authority))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	c := healthpb.NewHealthClient(cc)
	ctx := context.Background()
	req := &healthpb.HealthCheckRequest{}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Check(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

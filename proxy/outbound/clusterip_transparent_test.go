package outbound_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// ordersPolicy retries a 503 once (elsewhere: the balancer's other pod).
const ordersPolicy = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: orders}
spec:
  service: orders
  retries: {attempts: 1, retryOn: ["503"], backoff: {base: 1ms, max: 1ms}}
`

// TestTransparentHTTPByClusterIP: a redirected request to a Service's
// ClusterIP:port, with Host the ClusterIP (an app that calls
// $ORDERS_SERVICE_HOST), gets the Service's policy (its retry takes the
// failing pod's 503 to the other pod), is balanced over its pods, and is
// counted under its name, never reaching the ClusterIP itself. Before,
// the address named it: no policy, no balancing.
func TestTransparentHTTPByClusterIP(t *testing.T) {
	vip := proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) { _, _ = io.WriteString(w, "vip") })
	bad := proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) { w.WriteHeader(503) })
	good := proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) { _, _ = io.WriteString(w, "pod") })
	r := newRig(t, ordersPolicy, 0)
	_, port, _ := net.SplitHostPort(vip.Host())
	key := "orders.default.svc.cluster.local:" + port
	r.h.SetEndpoints(map[string][]balancer.Target{key: {{Addr: bad.Host()}, {Addr: good.Host()}}})
	r.h.SetClusterIPs(map[netip.AddrPort]string{netip.MustParseAddrPort(vip.Host()): key})
	addr := r.redirectedServer(vip.Host())
	for _, host := range []string{vip.Host(), "", "anything.example"} {
		raw := "GET /x HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n"
		if host == "" {
			raw = "GET /x HTTP/1.0\r\n\r\n"
		}
		for range 4 {
			resp, body := rawRoundTrip(t, addr, raw)
			if resp.StatusCode != 200 || string(body) != "pod" {
				t.Fatalf("Host %q: %d %q, want 200 \"pod\" (a 503 retried on the other pod)", host, resp.StatusCode, body)
			}
		}
	}
	if n := vip.Hits.Load(); n != 0 {
		t.Errorf("the ClusterIP itself got %d requests while the Service had pods", n)
	}
	if n := good.Hits.Load(); n != 12 {
		t.Errorf("the good pod got %d requests, want 12", n)
	}
	r.waitMetric(12, "minimesh_requests_total", "destination", "orders:"+port, "code", "200")

	// Several requests on one connection: named anew when the ClusterIPs
	// change (the connection's cache is by Host and ClusterIPs).
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func(want string) {
		t.Helper()
		if _, err := io.WriteString(c, "GET /k HTTP/1.1\r\nHost: "+vip.Host()+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != want {
			t.Fatalf("kept connection: %d %q, want %q", resp.StatusCode, body, want)
		}
	}
	get("pod")
	r.h.SetClusterIPs(nil) // an old control plane: the Host rule (here, the address)
	get("vip")
	r.h.SetClusterIPs(map[netip.AddrPort]string{netip.MustParseAddrPort(vip.Host()): key})
	get("pod")
}

// TestTransparentHTTPHostServiceElsewhere: with ClusterIPs known, a Host
// that names a Service on a connection to another address (a gateway, a
// pod) goes to that address as it is, named by it, as Linkerd does; it
// used to be balanced over the Service's pods, skipping the gateway.
func TestTransparentHTTPHostServiceElsewhere(t *testing.T) {
	gateway := proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) { _, _ = io.WriteString(w, "gateway") })
	pod := proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) { _, _ = io.WriteString(w, "pod") })
	r := newRig(t, ordersPolicy, 0)
	_, port, _ := net.SplitHostPort(gateway.Host())
	key := "orders.default.svc.cluster.local:" + port
	r.h.SetEndpoints(map[string][]balancer.Target{key: {{Addr: pod.Host()}}})
	r.h.SetClusterIPs(map[netip.AddrPort]string{netip.MustParseAddrPort("10.96.0.15:" + port): key})
	addr := r.redirectedServer(gateway.Host())
	for range 3 {
		resp, body := rawRoundTrip(t, addr, "GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != 200 || string(body) != "gateway" {
			t.Fatalf("%d %q, want the gateway's answer", resp.StatusCode, body)
		}
	}
	if n := pod.Hits.Load(); n != 0 {
		t.Errorf("the Service's pod got %d requests sent to another address", n)
	}
	r.waitMetric(3, "minimesh_requests_total", "destination", gateway.Host(), "code", "200")
}

// TestGRPCRedirectedByClusterIP: an h2c (gRPC) connection redirected from
// a Service's ClusterIP:port, its :authority the ClusterIP, is the
// Service's: balanced over its pods and counted under its name.
func TestGRPCRedirectedByClusterIP(t *testing.T) {
	vip := startGRPC(t, notServingHealth())
	pod := startGRPC(t, health.NewServer())
	orig := netip.MustParseAddrPort(vip)
	port := strconv.Itoa(int(orig.Port()))
	key := "health.default.svc.cluster.local:" + port
	m := telemetry.New(0)
	h := outbound.New(outbound.Config{Metrics: m, Namespace: "default"}, policy.NewTable(nil, "default"))
	h.SetEndpoints(map[string][]balancer.Target{key: {{Addr: pod}}})
	h.SetClusterIPs(map[netip.AddrPort]string{orig: key})
	c := redirectedHealth(t, h, orig, vip)
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("call %d: %v %v, want the pod's SERVING (the ClusterIP answers NOT_SERVING)", i, resp.GetStatus(), err)
		}
	}
	if got := grpcOKCalls(t, m, "health:"+port); got != 3 {
		t.Errorf("grpc_requests_total{destination=health:%s, OK} = %v, want 3", port, got)
	}
}

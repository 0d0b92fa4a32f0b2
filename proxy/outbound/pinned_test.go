package outbound_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/leanhttp"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// A headless Service's pods, as a StatefulSet's are: the app resolved the
// Service's name, picked one pod on purpose (the leader, a shard's owner)
// and connected there, with the Service's name as Host or SNI.

// namedPod answers every request with its name.
func namedPod(t *testing.T, name string) *proxytest.Upstream {
	return proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) { _, _ = io.WriteString(w, name) })
}

// redirectedLean is redirectedServer behind the lean loop, as the sidecar
// serves redirected HTTP/1.x unless --server std: its requests' states
// are lent again from one request to the next of a connection.
func (r *rig) redirectedLean(orig string) string {
	r.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(orig)
	ls := leanhttp.New(&http.Server{Handler: r.h.Transparent(), ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
		return outbound.WithOriginalDst(ctx, ap)
	}})
	ls.RequestContext = outbound.RequestContext
	go func() { _ = ls.ServeStd() }()
	go func() { _ = ls.Serve(ln) }()
	r.t.Cleanup(func() { ls.Close() })
	return ln.Addr().String()
}

// keepAliveTo is an app's client whose every connection goes to addr (the
// sidecar's redirected listener), kept alive between requests.
func keepAliveTo(t *testing.T, addr string) *http.Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// redirectedServers are the sidecar's two servers of redirected
// connections: the tests that keep connections alive run on both.
var redirectedServers = []struct {
	name  string
	serve func(r *rig, orig string) string
}{
	{"std", (*rig).redirectedServer},
	{"lean", (*rig).redirectedLean},
}

// TestRedirectedPodOfServiceKeepsToIt: a redirected request whose Host
// names a Service and whose original destination is one of that Service's
// endpoints goes to that endpoint, every time, named by the Service; one
// whose original destination is none of them (a pod gone from the
// endpoints) is balanced over them as before. Both servers, keep-alive.
func TestRedirectedPodOfServiceKeepsToIt(t *testing.T) {
	cases := []struct {
		name string
		host string // {port}: the Service port
		// vips: the control plane sent another Service's ClusterIP (the
		// db Service, headless, has none); else none at all (rule 3 alone).
		vips   bool
		toPodA bool // the original destination is pod A, else a third address
		want   string
	}{
		{"headless Service, Host its short name", "db", true, true, "A"},
		{"headless Service, Host fully qualified with port", "db.default.svc.cluster.local:{port}", true, true, "A"},
		{"no ClusterIPs from the control plane", "db.default", false, true, "A"},
		{"original destination no endpoint: balanced", "db", true, false, "AB"},
	}
	for _, sv := range redirectedServers {
		for _, c := range cases {
			t.Run(sv.name+"/"+c.name, func(t *testing.T) {
				podA, podB, other := namedPod(t, "A"), namedPod(t, "B"), namedPod(t, "other")
				r := newRig(t, "", 0)
				// The Service port is the one the app connected to (loopback
				// pods differ in port where a StatefulSet's share one).
				orig := other.Host()
				if c.toPodA {
					orig = podA.Host()
				}
				_, port, _ := net.SplitHostPort(orig)
				r.h.SetEndpoints(map[string][]balancer.Target{"db.default.svc.cluster.local:" + port: {{Addr: podA.Host()}, {Addr: podB.Host()}}})
				if c.vips {
					r.h.SetClusterIPs(map[netip.AddrPort]string{netip.MustParseAddrPort("10.96.0.15:80"): "web.default.svc.cluster.local:80"})
				}
				client := keepAliveTo(t, sv.serve(r, orig))
				host := strings.ReplaceAll(c.host, "{port}", port)
				got := map[string]int{}
				const n = 40
				for range n {
					req, _ := http.NewRequest(http.MethodGet, "http://"+host+"/x", nil)
					resp, err := client.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						t.Fatalf("%d %q", resp.StatusCode, body)
					}
					got[string(body)]++
				}
				if other.Hits.Load() != 0 {
					t.Errorf("the original destination, no endpoint of db, got %d requests", other.Hits.Load())
				}
				if c.want == "A" && got["A"] != n {
					t.Errorf("connected to pod A: answers %v, want all %d from A", got, n)
				}
				if c.want == "AB" && (got["A"] == 0 || got["B"] == 0) {
					t.Errorf("balanced: answers %v, want both pods", got)
				}
				// The Service's name, policy and metrics either way.
				r.waitMetric(n, "minimesh_requests_total", "destination", "db:"+port, "code", "200")
			})
		}
	}
}

// TestRedirectedPodOfServiceFailing: the pod the app connected to fails.
// Its retries go to it again, never to the Service's other pod; its
// failures count at that endpoint, which is ejected from the Service's
// balancing (requests through HTTP_PROXY then avoid it), but its own
// requests still go to it; the breaker and metrics are the Service's.
func TestRedirectedPodOfServiceFailing(t *testing.T) {
	podA := proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) { w.WriteHeader(http.StatusServiceUnavailable) })
	podB := namedPod(t, "B")
	_, port, _ := net.SplitHostPort(podA.Host())
	r := newRig(t, policyDoc("db", "db", `
retries: {attempts: 2, retryOn: [5xx], backoff: {base: 1ms, max: 1ms}}
circuitBreaker: {consecutiveFailures: 100, openTimeout: 1h}
outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 1h}
`), 0)
	r.h.SetEndpoints(map[string][]balancer.Target{"db.default.svc.cluster.local:" + port: {{Addr: podA.Host()}, {Addr: podB.Host()}}})
	addr := r.redirectedServer(podA.Host())
	for i := range 2 {
		resp, _ := rawRoundTrip(t, addr, "GET /x HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("request %d: %d, want pod A's 503", i, resp.StatusCode)
		}
		if a, b := podA.Hits.Load(), podB.Hits.Load(); a != int64(3*(i+1)) || b != 0 {
			t.Fatalf("after request %d: pod A %d tries, pod B %d; want every try (3 a request) at A", i, a, b)
		}
	}
	var ejected bool
	for _, s := range r.h.Endpoints() {
		for _, ep := range s.Endpoints {
			if ep.Addr == podA.Host() && ep.EjectedUntil != nil {
				ejected = true
			}
		}
	}
	if !ejected {
		t.Errorf("pod A failed 6 tries in a row and is not ejected: %+v", r.h.Endpoints())
	}
	r.waitMetric(2, "minimesh_requests_total", "destination", "db:"+port, "code", "503")
	r.waitMetric(1, "minimesh_endpoint_ejections_total", "destination", "db:"+port)

	// The app that calls the Service by name (HTTP_PROXY) gets pod B.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: r.h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: ln.Addr().String()})}
	t.Cleanup(tr.CloseIdleConnections)
	resp, body := get(t, &http.Client{Transport: tr, Timeout: 10 * time.Second}, "http://db:"+port+"/")
	if resp.StatusCode != 200 || string(body) != "B" || podA.Hits.Load() != 6 {
		t.Errorf("through HTTP_PROXY: %d %q, pod A %d tries; want B's 200, A ejected", resp.StatusCode, body, podA.Hits.Load())
	}
}

// TestServeTCPPodOfServiceBySNI: an opaque connection (TLS) to one of the
// pods of the Service its SNI names goes to that pod, every time; a
// connect failure there is retried there, never on another pod.
func TestServeTCPPodOfServiceBySNI(t *testing.T) {
	t.Run("reachable", func(t *testing.T) {
		podA, podB := newNamedServer(t, "A"), newNamedServer(t, "B")
		r := newRig(t, "", 0)
		_, port, _ := net.SplitHostPort(podA.addr)
		r.h.SetEndpoints(map[string][]balancer.Target{"db.default.svc.cluster.local:" + port: {{Addr: podA.addr}, {Addr: podB.addr}}})
		r.h.SetClusterIPs(map[netip.AddrPort]string{netip.MustParseAddrPort("10.96.0.15:80"): "web.default.svc.cluster.local:80"})
		addr := r.tcpListener(outbound.TCPConn{Original: netip.MustParseAddrPort(podA.addr), SNI: "db.default.svc.cluster.local", Protocol: "tls"})
		const n = 20
		for i := range n {
			if name, err := readGreeting(addr); err != nil || name != "A\n" {
				t.Fatalf("connection %d: %q %v, want pod A's greeting", i, name, err)
			}
		}
		if b := podB.accepted.Load(); b != 0 {
			t.Errorf("pod B accepted %d of the connections made to pod A", b)
		}
		r.waitMetric(n, "minimesh_tcp_connections_total", "destination", "db:"+port, "result", "ok")
	})
	t.Run("refused", func(t *testing.T) {
		podB := newNamedServer(t, "B")
		deadA := refused.Addr(t)
		_, port, _ := net.SplitHostPort(deadA)
		r := newRig(t, policyDoc("db", "db", `
retries: {attempts: 2, retryOn: [connect-failure], backoff: {base: 1ms, max: 1ms}}
`), 0)
		r.h.SetEndpoints(map[string][]balancer.Target{"db.default.svc.cluster.local:" + port: {{Addr: deadA}, {Addr: podB.addr}}})
		addr := r.tcpListener(outbound.TCPConn{Original: netip.MustParseAddrPort(deadA), SNI: "db", Protocol: "tls"})
		if name, err := readGreeting(addr); err == nil {
			t.Fatalf("read %q from a connection to a dead pod", name)
		}
		if b := podB.accepted.Load(); b != 0 {
			t.Errorf("the connect failure at pod A was retried on pod B (%d connections)", b)
		}
		r.waitMetric(1, "minimesh_tcp_connections_total", "destination", "db:"+port, "result", "connect-failure")
		r.waitMetric(2, "minimesh_retries_total", "destination", "db:"+port)
	})
}

// TestGRPCRedirectedPodOfService: gRPC calls on an h2c connection to one
// pod of a headless Service, :authority the Service's name, all go to
// that pod (pod B answers NOT_SERVING); each stream decides for itself.
func TestGRPCRedirectedPodOfService(t *testing.T) {
	podA := startGRPC(t, health.NewServer())
	podB := startGRPC(t, notServingHealth())
	orig := netip.MustParseAddrPort(podA)
	_, port, _ := net.SplitHostPort(podA)
	m := telemetry.New(0)
	h := outbound.New(outbound.Config{Metrics: m, Namespace: "default"}, policy.NewTable(nil, "default"))
	h.SetEndpoints(map[string][]balancer.Target{"health.default.svc.cluster.local:" + port: {{Addr: podA}, {Addr: podB}}})
	h.SetClusterIPs(map[netip.AddrPort]string{netip.MustParseAddrPort("10.96.0.15:80"): "web.default.svc.cluster.local:80"})
	c := redirectedHealth(t, h, orig, "health:"+port)
	const n = 20
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("call %d: %v %v, want pod A's SERVING (pod B answers NOT_SERVING)", i, resp.GetStatus(), err)
		}
	}
	if got := grpcOKCalls(t, m, "health:"+port); got != n {
		t.Errorf("grpc_requests_total{destination=health:%s, OK} = %v, want %d", port, got, n)
	}
}

// TestPerPodNameReachesThePod: a StatefulSet pod's own DNS name
// (pod-a.db.default.svc.cluster.local, through the headless Service db)
// reaches that pod, redirected or through HTTP_PROXY, and is named by it:
// never by the Service pod-a of a namespace db, which the name's short
// spelling in namespace default ("pod-a.db") would also read as.
func TestPerPodNameReachesThePod(t *testing.T) {
	podA, podB, other := namedPod(t, "A"), namedPod(t, "B"), namedPod(t, "other")
	_, port, _ := net.SplitHostPort(podA.Host())
	for _, c := range []struct {
		name, host string
		redirected bool
	}{
		{"redirected", "pod-a.db.default.svc.cluster.local", true},
		{"redirected, trailing dot", "pod-a.db.default.svc.cluster.local.", true},
		{"HTTP_PROXY", "pod-a.db.default.svc.cluster.local", false},
		{"HTTP_PROXY, short search-domain spelling", "pod-a.db.default.svc", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := telemetry.New(0)
			h := outbound.New(outbound.Config{Metrics: m, Namespace: "default", ConnectTimeout: time.Second,
				Resolve: resolve(podA.Host(), c.host+":"+port)}, policy.NewTable(nil, "default"))
			h.SetEndpoints(map[string][]balancer.Target{
				"db.default.svc.cluster.local:" + port: {{Addr: podA.Host()}, {Addr: podB.Host()}},
				"pod-a.db.svc.cluster.local:" + port:   {{Addr: other.Host()}}, // Service pod-a in namespace db
			})
			r := &rig{t: t, h: h, metrics: m}
			var client *http.Client
			if c.redirected {
				client = keepAliveTo(t, r.redirectedServer(podA.Host()))
			} else {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				srv := &http.Server{Handler: h}
				go func() { _ = srv.Serve(ln) }()
				t.Cleanup(func() { srv.Close() })
				tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: ln.Addr().String()})}
				t.Cleanup(tr.CloseIdleConnections)
				client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
			}
			for range 10 {
				resp, body := get(t, client, "http://"+c.host+":"+port+"/")
				if resp.StatusCode != 200 || string(body) != "A" {
					t.Fatalf("%d %q, want pod A's answer", resp.StatusCode, body)
				}
			}
			dest := strings.TrimSuffix(strings.TrimSuffix(c.host, "."), ".svc.cluster.local")
			dest = strings.TrimSuffix(dest, ".svc") + ":" + port
			r.waitMetric(10, "minimesh_requests_total", "destination", dest, "code", "200")
		})
	}
}

// listenIPv6 listens on [::1]:port, pod A's IPv6 address on loopback (the
// same port as its IPv4 one, as a dual-stack pod's), or skips where the
// machine has no IPv6 loopback, outside CI.
func listenIPv6(t *testing.T, port string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort("::1", port))
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("needs [::1]:%s: %v", port, err)
		}
		t.Skip("no IPv6 loopback:", err)
	}
	return ln
}

// TestRedirectedDualStackPodByOtherFamily: pod A is dual-stack, and the
// control plane sent the Service's endpoints in its primary family only
// (IPv4, endpointctl). An app that resolved the headless Service's AAAA
// record and connected to pod A's IPv6 address, Host the Service's name,
// chose pod A: every request goes to that address, named by the Service.
// Until 2026-12-06 they were balanced over the IPv4 endpoints (17 of 40
// to pod B). A connection to an IPv6 address of the Service's own family
// that is no endpoint is balanced as before, and so is one to the
// Service's IPv6 ClusterIP. Both servers, keep-alive.
func TestRedirectedDualStackPodByOtherFamily(t *testing.T) {
	cases := []struct {
		name string
		// v6Endpoints: the Service's endpoints are IPv6 (pod B's only:
		// the app's [::1] is of their family and none of them).
		v6Endpoints bool
		clusterIP   bool // [::1]:port is the Service's IPv6 ClusterIP
		want        string
	}{
		{"IPv4 endpoints, pod A's IPv6 address", false, false, "A6"},
		{"IPv6 endpoints, an IPv6 address none of them: balanced", true, false, "B"},
		{"the Service's IPv6 ClusterIP: balanced", false, true, "AB"},
	}
	for _, sv := range redirectedServers {
		for _, c := range cases {
			t.Run(sv.name+"/"+c.name, func(t *testing.T) {
				podA, podB := namedPod(t, "A"), namedPod(t, "B")
				_, port, _ := net.SplitHostPort(podA.Host())
				ln6 := listenIPv6(t, port)
				srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "A6") })}
				go func() { _ = srv.Serve(ln6) }()
				t.Cleanup(func() { srv.Close() })
				r := newRig(t, "", 0)
				eps := []balancer.Target{{Addr: podA.Host()}, {Addr: podB.Host()}}
				if c.v6Endpoints {
					podB6 := listenIPv6(t, "0")
					srvB := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "B") })}
					go func() { _ = srvB.Serve(podB6) }()
					t.Cleanup(func() { srvB.Close() })
					eps = []balancer.Target{{Addr: podB6.Addr().String()}}
				}
				r.h.SetEndpoints(map[string][]balancer.Target{"db.default.svc.cluster.local:" + port: eps})
				vips := map[netip.AddrPort]string{netip.MustParseAddrPort("10.96.0.15:80"): "web.default.svc.cluster.local:80"}
				if c.clusterIP {
					vips[netip.MustParseAddrPort("[::1]:"+port)] = "db.default.svc.cluster.local:" + port
				}
				r.h.SetClusterIPs(vips)
				client := keepAliveTo(t, sv.serve(r, "[::1]:"+port))
				got := map[string]int{}
				const n = 40
				for range n {
					resp, body := get(t, client, "http://db/x")
					if resp.StatusCode != 200 {
						t.Fatalf("%d %q", resp.StatusCode, body)
					}
					got[string(body)]++
				}
				switch c.want {
				case "AB":
					if got["A"] == 0 || got["B"] == 0 || got["A6"] != 0 {
						t.Errorf("balanced over the IPv4 endpoints: answers %v, want A and B, none from [::1]", got)
					}
				default:
					if got[c.want] != n {
						t.Errorf("answers %v, want all %d from %s", got, n, c.want)
					}
				}
				r.waitMetric(n, "minimesh_requests_total", "destination", "db:"+port, "code", "200")
			})
		}
	}
}

// TestServeTCPDualStackPodBySNI: an opaque connection to pod A's IPv6
// address, SNI the Service's name, its endpoints sent in IPv4 only, goes
// to that address every time; a connect failure there is retried there,
// never on an IPv4 endpoint.
func TestServeTCPDualStackPodBySNI(t *testing.T) {
	t.Run("reachable", func(t *testing.T) {
		podA, podB := newNamedServer(t, "A"), newNamedServer(t, "B")
		_, port, _ := net.SplitHostPort(podA.addr)
		ln6 := listenIPv6(t, port)
		go func() {
			for {
				c, err := ln6.Accept()
				if err != nil {
					return
				}
				_, _ = io.WriteString(c, "A6\n")
				c.Close()
			}
		}()
		t.Cleanup(func() { ln6.Close() })
		r := newRig(t, "", 0)
		r.h.SetEndpoints(map[string][]balancer.Target{"db.default.svc.cluster.local:" + port: {{Addr: podA.addr}, {Addr: podB.addr}}})
		r.h.SetClusterIPs(map[netip.AddrPort]string{netip.MustParseAddrPort("10.96.0.15:80"): "web.default.svc.cluster.local:80"})
		addr := r.tcpListener(outbound.TCPConn{Original: netip.MustParseAddrPort("[::1]:" + port), SNI: "db", Protocol: "tls"})
		const n = 20
		for i := range n {
			if name, err := readGreeting(addr); err != nil || name != "A6\n" {
				t.Fatalf("connection %d: %q %v, want pod A's IPv6 greeting", i, name, err)
			}
		}
		if a, b := podA.accepted.Load(), podB.accepted.Load(); a != 0 || b != 0 {
			t.Errorf("the IPv4 endpoints accepted %d (A) and %d (B) of the connections made to [::1]", a, b)
		}
		r.waitMetric(n, "minimesh_tcp_connections_total", "destination", "db:"+port, "result", "ok")
	})
	t.Run("refused", func(t *testing.T) {
		podB := newNamedServer(t, "B")
		ln := listenIPv6(t, "0")
		deadA := ln.Addr().String()
		ln.Close()
		_, port, _ := net.SplitHostPort(deadA)
		r := newRig(t, policyDoc("db", "db", `
retries: {attempts: 2, retryOn: [connect-failure], backoff: {base: 1ms, max: 1ms}}
`), 0)
		r.h.SetEndpoints(map[string][]balancer.Target{"db.default.svc.cluster.local:" + port: {{Addr: podB.addr}}})
		addr := r.tcpListener(outbound.TCPConn{Original: netip.MustParseAddrPort(deadA), SNI: "db", Protocol: "tls"})
		if name, err := readGreeting(addr); err == nil {
			t.Fatalf("read %q from a connection to a dead pod", name)
		}
		if b := podB.accepted.Load(); b != 0 {
			t.Errorf("the connect failure at [::1] was retried on pod B (%d connections)", b)
		}
		r.waitMetric(1, "minimesh_tcp_connections_total", "destination", "db:"+port, "result", "connect-failure")
		r.waitMetric(2, "minimesh_retries_total", "destination", "db:"+port)
	})
}

// readGreeting reads the first line a pod's server sends on a connection
// through the sidecar's listener at addr. A dial error is returned: the
// sidecar's reset of a connection whose every dial failed may come
// before connect returns on loopback (1 run in 8 under -race).
func readGreeting(addr string) (string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return bufio.NewReader(c).ReadString('\n')
}

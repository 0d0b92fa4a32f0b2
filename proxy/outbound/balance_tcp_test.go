package outbound_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/internal/otlptest"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// namedServer is a TCP server that greets each connection with its name
// and a newline, then echoes until the client half-closes. It counts the
// connections it accepted.
type namedServer struct {
	name, addr string
	accepted   atomic.Int64
}

func newNamedServer(t *testing.T, name string) *namedServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &namedServer{name: name, addr: ln.Addr().String()}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if _, err := io.WriteString(c, name+"\n"); err == nil {
					_, _ = io.Copy(c, c)
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return s
}

// tcpWays are the two opaque connections dialTunnel makes, each to the
// Service orders on port: how the app opens one, and the sidecar's
// destination for it. A redirected connection to the ClusterIP (clusterIP,
// what kube-proxy would take) or a CONNECT tunnel to the Service's name.
var tcpWays = []struct {
	name string
	open func(t *testing.T, r *rig, clusterIP string) func() (net.Conn, *bufio.Reader, error)
}{
	{"ServeTCP to the ClusterIP", func(t *testing.T, r *rig, clusterIP string) func() (net.Conn, *bufio.Reader, error) {
		addr := r.tcpListener(outbound.TCPConn{Original: netip.MustParseAddrPort(clusterIP), Protocol: "unknown"})
		return func() (net.Conn, *bufio.Reader, error) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return nil, nil, err
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			return c, bufio.NewReader(c), nil
		}
	}},
	{"CONNECT to the Service", func(t *testing.T, r *rig, clusterIP string) func() (net.Conn, *bufio.Reader, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: r.h}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { srv.Close() })
		_, port, _ := net.SplitHostPort(clusterIP)
		authority := "orders:" + port
		return func() (net.Conn, *bufio.Reader, error) {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				return nil, nil, err
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, "CONNECT "+authority+" HTTP/1.1\r\nHost: "+authority+"\r\n\r\n"); err != nil {
				c.Close()
				return nil, nil, err
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil {
				c.Close()
				return nil, nil, err
			}
			if resp.StatusCode != http.StatusOK {
				c.Close()
				return nil, nil, &connectRefused{resp.StatusCode, resp.Header.Get("X-Minimesh-Error")}
			}
			return c, br, nil
		}
	}},
}

// greetedBy opens n connections one after the other, each closed once
// greeted, and fails t at the first that is not made or not greeted by
// name: the endpoint every connection must end at, whatever the others
// did to their tries.
func greetedBy(t *testing.T, open func() (net.Conn, *bufio.Reader, error), n int, name string) {
	t.Helper()
	for i := range n {
		c, br, err := open()
		if err != nil {
			t.Fatalf("connection %d: %v, want it made to %s", i, err, name)
		}
		got, err := br.ReadString('\n')
		c.Close()
		if err != nil || got != name+"\n" {
			t.Fatalf("connection %d: greeted %q, %v; want %s's", i, got, err, name)
		}
	}
}

type connectRefused struct {
	code int
	kind string
}

func (e *connectRefused) Error() string { return http.StatusText(e.code) + " " + e.kind }

// ordersKey is the EDS name of the Service orders on the ClusterIP's
// port, seen from the rig's namespace.
func ordersKey(clusterIP string) string {
	_, port, _ := net.SplitHostPort(clusterIP)
	return "orders.default.svc.cluster.local:" + port
}

// ordersEndpoints is /debug/endpoints' list for orders, by address.
func ordersEndpoints(r *rig, clusterIP string) map[string]balancer.EndpointStatus {
	out := map[string]balancer.EndpointStatus{}
	for _, s := range r.h.Endpoints() {
		if s.Service == ordersKey(clusterIP) {
			for _, e := range s.Endpoints {
				out[e.Addr] = e
			}
		}
	}
	return out
}

// TestBalanceTCPSpreadsConnections: opaque connections to a Service, a
// redirected one to its ClusterIP and a CONNECT tunnel to its name, are
// balanced over the endpoints the control plane sent, as its HTTP
// requests are: 30 connections held open at once spread over three
// endpoints, none to the ClusterIP; each open connection is in flight at
// its endpoint (/debug/endpoints), until it closes; the log line keeps
// the address the app connected to. Without endpoints, the connection
// goes where the app sent it. Before, every connection went to the
// ClusterIP (kube-proxy's pick), unbalanced and never ejected.
func TestBalanceTCPSpreadsConnections(t *testing.T) {
	for _, way := range tcpWays {
		t.Run(way.name, func(t *testing.T) {
			const conns = 30
			vip := newNamedServer(t, "clusterip") // what kube-proxy would pick from
			pods := []*namedServer{newNamedServer(t, "pod0"), newNamedServer(t, "pod1"), newNamedServer(t, "pod2")}
			r := newRig(t, "", 0)
			var targets []balancer.Target
			for _, p := range pods {
				targets = append(targets, balancer.Target{Addr: p.addr})
			}
			r.h.SetEndpoints(map[string][]balancer.Target{ordersKey(vip.addr): targets})
			r.h.SetClusterIPs(map[netip.AddrPort]string{netip.MustParseAddrPort(vip.addr): ordersKey(vip.addr)})
			open := way.open(t, r, vip.addr)

			got := map[string]int{}
			var held []net.Conn
			// Before the servers' cleanups, which wait for their
			// connections, also when the test fails with them open.
			t.Cleanup(func() {
				for _, c := range held {
					c.Close()
				}
			})
			for i := range conns {
				c, br, err := open()
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				held = append(held, c)
				name, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("connection %d: reading the greeting: %v", i, err)
				}
				got[strings.TrimSpace(name)]++
			}
			if got["clusterip"] != 0 || len(got) != 3 {
				t.Fatalf("%d connections went to %v, want all to the three endpoints", conns, got)
			}
			for _, p := range pods {
				// Open connections count in the duel: each of three gets
				// ~10 of 30; fewer than 2 has odds of 2e-4 even when
				// one pod's connect looks 10× slower on a busy node (the
				// balancer's own tests hold the shares to more).
				if got[p.name] < 2 {
					t.Errorf("%d connections went to %v: %s got fewer than 2", conns, got, p.name)
				}
			}
			eps := ordersEndpoints(r, vip.addr)
			for _, p := range pods {
				if e := eps[p.addr]; e.InFlight != got[p.name] {
					t.Errorf("%s: %d in flight on /debug/endpoints, want its %d open connections", p.name, e.InFlight, got[p.name])
				}
			}
			for _, c := range held {
				c.Close()
			}
			if !proxytest.Poll(10*time.Second, 5*time.Millisecond, func() bool {
				for _, e := range ordersEndpoints(r, vip.addr) {
					if e.InFlight != 0 {
						return false
					}
				}
				return true
			}) {
				t.Fatalf("after every connection closed, still in flight: %+v", ordersEndpoints(r, vip.addr))
			}
			for _, e := range ordersEndpoints(r, vip.addr) {
				if e.EWMA <= 0 || e.EWMA > 5*time.Second {
					t.Errorf("%s: estimate %v, want its connect time, known", e.Addr, e.EWMA)
				}
			}
			for _, l := range r.lines(conns) {
				if l["destination"] != "orders:"+portOf(t, vip.addr) || (way.name[0] == 'S' && l["original_dst"] != vip.addr) {
					t.Errorf("log line %v: want destination orders, original_dst the ClusterIP %s", l, vip.addr)
				}
			}

			// No endpoints: where the app sent it (kube-proxy's ClusterIP;
			// a CONNECT's name does not resolve here).
			r.h.SetEndpoints(nil)
			c, br, err := open()
			if way.name[0] == 'S' {
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if name, err := br.ReadString('\n'); err != nil || name != "clusterip\n" {
					t.Errorf("without endpoints: greeted %q, %v; want the ClusterIP's", name, err)
				}
			} else if ce, ok := err.(*connectRefused); !ok || ce.kind != "connect-failure" {
				t.Errorf("CONNECT without endpoints: %v, want a connect failure of the name", err)
			}
		})
	}
}

// TestBalanceTCPConnectFailureRetriedElsewhere: an opaque connection
// whose connect to an endpoint fails is retried (connect-failure) on an
// endpoint it has not tried, and the failures count against their
// endpoints: with two dead endpoints of three and two retries, every
// connection reaches the live one, and a dead one is ejected (the 50 %
// cap lets one of three out; the other keeps being avoided by each
// connection's retries). Before, the connection dialled the ClusterIP:
// here nothing listens there, and every connection failed.
func TestBalanceTCPConnectFailureRetriedElsewhere(t *testing.T) {
	for _, way := range tcpWays {
		t.Run(way.name, func(t *testing.T) {
			vip := refused.Addr(t) // a ClusterIP kube-proxy has no pod for
			dead0, dead1 := refused.Addr(t), refused.Addr(t)
			live := newNamedServer(t, "live")
			r := newRig(t, policyDoc("orders", "orders", `
retries: {attempts: 2, retryOn: [connect-failure], backoff: {base: 1ms, max: 1ms}, budget: {minPerSecond: 100000}}
circuitBreaker: {consecutiveFailures: 1000}
outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 1h, maxEjectionPercent: 50}
`), 0)
			r.h.SetEndpoints(map[string][]balancer.Target{ordersKey(vip): {{Addr: dead0}, {Addr: live.addr}, {Addr: dead1}}})
			r.h.SetClusterIPs(map[netip.AddrPort]string{netip.MustParseAddrPort(vip): ordersKey(vip)})
			open := way.open(t, r, vip)
			const conns = 30
			greetedBy(t, open, conns, live.name)
			if n := live.accepted.Load(); n != conns {
				t.Errorf("the live endpoint accepted %d connections, want %d", n, conns)
			}
			eps := ordersEndpoints(r, vip)
			ejected := 0
			for _, a := range []string{dead0, dead1} {
				if eps[a].EjectedUntil != nil {
					ejected++
				}
			}
			if ejected != 1 || eps[live.addr].EjectedUntil != nil {
				t.Errorf("endpoints %+v: want one dead endpoint ejected (the cap), the live one in", eps)
			}
			dest := "orders:" + portOf(t, vip)
			r.waitMetric(1, "minimesh_endpoint_ejections_total", "destination", dest)
			r.waitMetric(conns, "minimesh_tcp_connections_total", "destination", dest, "result", "ok")
			retried := 0
			for _, l := range r.lines(conns) {
				if a, _ := l["attempts"].(float64); a > 1 {
					retried++
				}
			}
			if retried == 0 {
				t.Errorf("no connection was retried: the dead endpoints were never picked")
			}
		})
	}
}

// TestBalanceTCPConnectSpanPeer: a CONNECT tunnel's span names the
// endpoint it was made to (network.peer.*), as an HTTP try's span does.
// Before, it had none: the name was dialled.
func TestBalanceTCPConnectSpanPeer(t *testing.T) {
	pod := newNamedServer(t, "pod")
	col := otlptest.Start(t)
	sc := startSidecar(t, "", nil, withNamespace("shop"),
		func(cfg *sidecar.Config) { cfg.OTLPEndpoint, cfg.TraceSampleRatio = col.Addr, 1 })
	sc.S.Handler().SetEndpoints(map[string][]balancer.Target{geoEDS: {{Addr: pod.addr}}})
	const traceID = "5e3c00000000000000000000000c0ec7"
	c := dialSidecar(t, sc)
	if _, err := io.WriteString(c, "CONNECT "+geo+" HTTP/1.1\r\nHost: "+geo+"\r\nTraceparent: 00-"+traceID+"-b7ad6b7169203331-01\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT answer %v, %v: want 200", resp, err)
	}
	if name, err := br.ReadString('\n'); err != nil || name != "pod\n" {
		t.Fatalf("greeted %q, %v; want the endpoint's", name, err)
	}
	spans := col.Trace(t, traceID, 1)
	a := spanAttrs(spans[0])
	host, port, _ := net.SplitHostPort(pod.addr)
	if a["network.peer.address"] != host || a["network.peer.port"] != port || a["server.address"] != "geo-service" {
		t.Errorf("CONNECT span %v: want network.peer.* %s, server.address geo-service", a, pod.addr)
	}
	c.Close()
}

// TestBalanceRetriesNeverRepeat: an HTTP request's retries go to
// endpoints it has not tried while there are any (Envoy's
// previous_hosts), then take turns: with three endpoints that all fail
// and two retries, each request's three tries reach each endpoint once;
// with two endpoints and three retries, each endpoint twice. Before, a
// retry avoided only the previous try's endpoint: the third try went back
// to the first one half the time.
func TestBalanceRetriesNeverRepeat(t *testing.T) {
	for _, tr := range balanceTransports {
		for _, tc := range []struct {
			pods, attempts int
		}{{3, 2}, {2, 3}, {4, 3}} {
			t.Run(fmt.Sprintf("%s/%d pods, %d retries", tr.name, tc.pods, tc.attempts), func(t *testing.T) {
				pods := newPods(t, tc.pods)
				for _, p := range pods {
					p.fail.Store(true)
				}
				sc := startSidecar(t, policyDoc("geo", "geo-service", `
retries: {attempts: `+strconv.Itoa(tc.attempts)+`, retryOn: [5xx], backoff: {base: 1ms, max: 1ms}, budget: {minPerSecond: 100000}}
circuitBreaker: {consecutiveFailures: 1000}
outlierDetection: {consecutiveFailures: 0}
`), nil, withNamespace("shop"), tr.opt)
				setPods(sc, pods)
				c := sc.Client()
				tries := tc.attempts + 1
				want := make([]int64, tc.pods) // hits of each pod per request
				for i := range tries {
					want[i%tc.pods]++ // as many as a turn gives, whichever pods
				}
				slices.Sort(want)
				for i := range 40 {
					before := hitsOf(pods)
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+geo+"/", nil)
					resp, _ := fetch(t, c, req)
					cancel()
					if resp.StatusCode != http.StatusInternalServerError {
						t.Fatalf("request %d: %d, want the pods' 500 after every try", i, resp.StatusCode)
					}
					got := hitsOf(pods)
					for j := range got {
						got[j] -= before[j]
					}
					sorted := slices.Sorted(slices.Values(got))
					if !slices.Equal(sorted, want) {
						t.Fatalf("%d pods, %d tries: request %d's tries hit the pods %v, want each %v (in some order)", tc.pods, tries, i, got, want)
					}
				}
			})
		}
	}
}

package outbound_test

import (
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/outbound"
)

// TestServeTCPByClusterIP: a redirected connection relayed as opaque TCP
// (raw bytes, or TLS the app originates) is named as a redirected HTTP
// request is (vipTable.authority), its SNI in the place of Host: a
// Service's ClusterIP:port is that Service in the metrics and the log
// line, whatever the SNI; an SNI that names a Service the app did not
// connect to is not taken. It is relayed to the Service's endpoint, here
// the upstream itself (balancing: balance_tcp_test.go). Before, the
// ClusterIP was counted by its address (or its SNI), never as the Service.
func TestServeTCPByClusterIP(t *testing.T) {
	const key = "orders.default.svc.cluster.local:" // + the port
	for _, tc := range []struct {
		name, sni, protocol string
		// at: the upstream's address is the Service's ClusterIP; else
		// the Service has another one (10.96.0.15) and the upstream is,
		// say, one of its pods. noVIPs: the control plane sent none.
		at, noVIPs bool
		want       string // "service", "address", "sni"
	}{
		{name: "raw TCP to the ClusterIP", protocol: "unknown", at: true, want: "service"},
		{name: "a server-speaks-first port of the ClusterIP", protocol: "opaque-port", at: true, want: "service"},
		{name: "TLS to the ClusterIP, SNI the Service", sni: "orders.default.svc.cluster.local", protocol: "tls", at: true, want: "service"},
		{name: "TLS to the ClusterIP, SNI another name", sni: "api.example.com", protocol: "tls", at: true, want: "service"},
		{name: "TLS to a pod, SNI the Service: the pod as it is", sni: "orders", protocol: "tls", want: "address"},
		{name: "TLS to an external address: its SNI", sni: "api.example.com", protocol: "tls", want: "sni"},
		{name: "raw TCP to an address that is no ClusterIP", protocol: "unknown", want: "address"},
		{name: "no ClusterIPs sent: the address", protocol: "unknown", noVIPs: true, want: "address"},
		{name: "no ClusterIPs sent: the SNI, as before", sni: "orders", protocol: "tls", noVIPs: true, want: "sni"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			upAddr, _ := echoServer(t)
			_, port, _ := net.SplitHostPort(upAddr)
			r := newRig(t, "", 0)
			r.h.SetEndpoints(map[string][]balancer.Target{key + port: {{Addr: upAddr}}})
			vip := netip.MustParseAddrPort("10.96.0.15:" + port)
			if tc.at {
				vip = netip.MustParseAddrPort(upAddr)
			}
			if !tc.noVIPs {
				r.h.SetClusterIPs(map[netip.AddrPort]string{vip: key + port})
			}
			want := map[string]string{"service": "orders:" + port, "address": upAddr, "sni": net.JoinHostPort(tc.sni, port)}[tc.want]

			c, err := net.Dial("tcp", r.tcpListener(outbound.TCPConn{Original: netip.MustParseAddrPort(upAddr), SNI: tc.sni, Protocol: tc.protocol}))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			_ = c.(*net.TCPConn).CloseWrite()
			if got, err := io.ReadAll(c); err != nil || string(got) != "hellobye" {
				t.Fatalf("read %q, %v: want the original destination's echo", got, err)
			}
			r.waitMetric(1, "minimesh_tcp_connections_total", "destination", want, "result", "ok")
			if got := r.metric("minimesh_tcp_connections_total"); got != 1 {
				t.Errorf("tcp_connections_total = %v in all, want the one, under %s", got, want)
			}
			if s := r.metric("minimesh_tcp_sent_bytes_total", "destination", want); s != 5 {
				t.Errorf("tcp_sent_bytes_total{destination=%s} = %v, want 5", want, s)
			}
			l := r.lines(1)[0]
			if l["destination"] != want || l["original_dst"] != upAddr || l["protocol"] != tc.protocol {
				t.Errorf("log line %v: want destination %s, original_dst %s", l, want, upAddr)
			}
		})
	}
}

// TestServeTCPClusterIPPolicy: opaque TCP to a Service's ClusterIP gets
// that Service's policy, the part of it that applies to opaque TCP
// (docs/policy.md: connect failures retried, the breaker), and shares
// its breaker with the Service's HTTP requests: once opaque connects
// opened it, a request to the ClusterIP meets it too. Before, the address
// named the connection: the default policy (no retry, 5 failures).
func TestServeTCPClusterIPPolicy(t *testing.T) {
	down := refused.Addr(t)
	_, port, _ := net.SplitHostPort(down)
	dest := "orders:" + port
	r := newRig(t, policyDoc("orders", "orders", `
retries: {attempts: 1, retryOn: [connect-failure], backoff: {base: 1ms, max: 1ms}}
circuitBreaker: {consecutiveFailures: 2, openTimeout: 60s}`), 0)
	r.h.SetClusterIPs(map[netip.AddrPort]string{netip.MustParseAddrPort(down): "orders.default.svc.cluster.local:" + port})
	addr := r.tcpListener(outbound.TCPConn{Original: netip.MustParseAddrPort(down), Protocol: "opaque-port"})
	for i := range 2 {
		if c, err := net.Dial("tcp", addr); err == nil { // the reset may beat the dial's return
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || errorsIsTimeout(err) {
				t.Fatalf("connection %d: read %d, %v; want the connection ended", i, n, err)
			}
			c.Close()
		}
		// One at a time: the first's two tries open the breaker.
		r.waitMetric(float64(i+1), "minimesh_tcp_connections_total", "destination", dest)
	}
	r.waitMetric(1, "minimesh_tcp_connections_total", "destination", dest, "result", "connect-failure")
	r.waitMetric(1, "minimesh_tcp_connections_total", "destination", dest, "result", "circuit-open")
	r.waitMetric(1, "minimesh_circuit_breaker_rejected_total", "destination", dest)
	for _, l := range r.lines(2) {
		if l["destination"] != dest || l["original_dst"] != down {
			t.Errorf("log line %v: want destination %s, original_dst %s", l, dest, down)
		}
		if l["error"] == "connect-failure" && l["attempts"] != 2.0 {
			t.Errorf("connect failure after %v attempts, want 2 (the policy's retry): %v", l["attempts"], l)
		}
	}
	// The same breaker as the Service's HTTP requests to its ClusterIP.
	resp, body := rawRoundTrip(t, r.redirectedServer(down), "GET / HTTP/1.1\r\nHost: "+down+"\r\nConnection: close\r\n\r\n")
	expectCircuitOpen(t, resp, body, dest, 60)
	var open []string
	for _, b := range r.h.Breakers() {
		if b.State != "closed" {
			open = append(open, b.Destination)
		}
	}
	if !reflect.DeepEqual(open, []string{dest}) {
		t.Errorf("breakers not closed: %v, want %s alone", open, dest)
	}
}

// TestDebugEndpointsClusterIPs: /debug/endpoints shows each Service
// port's ClusterIPs (both families) beside its endpoints, so an operator
// can tell why a connection to one is named by the Service; a Service
// with ClusterIPs and no endpoint is listed with none, a headless one
// without clusterIPs. Before, the ClusterIPs were nowhere to be seen.
func TestDebugEndpointsClusterIPs(t *testing.T) {
	const (
		orders   = "orders.default.svc.cluster.local:8080"
		headless = "db.default.svc.cluster.local:5432"
		idle     = "idle.shop.svc.cluster.local:80"
	)
	r := newRig(t, "", 0)
	r.h.SetEndpoints(map[string][]balancer.Target{
		orders:   {{Addr: "10.244.0.7:8080"}, {Addr: "10.244.0.8:8080"}},
		headless: {{Addr: "10.244.0.9:5432"}},
	})
	r.h.SetClusterIPs(map[netip.AddrPort]string{
		netip.MustParseAddrPort("[fd00:96::15]:8080"): orders,
		netip.MustParseAddrPort("10.96.0.15:8080"):    orders,
		netip.MustParseAddrPort("10.96.0.30:80"):      idle,
	})
	b, err := json.Marshal(r.h.Endpoints()) // what the admin handler writes
	if err != nil {
		t.Fatal(err)
	}
	var doc []struct {
		Service    string            `json:"service"`
		ClusterIPs *[]string         `json:"clusterIPs"`
		Endpoints  []json.RawMessage `json:"endpoints"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	type shown struct {
		clusterIPs []string // nil: no clusterIPs field
		endpoints  int      // -1: endpoints null
	}
	got := map[string]shown{}
	for _, d := range doc {
		s := shown{endpoints: len(d.Endpoints)}
		if d.Endpoints == nil {
			s.endpoints = -1
		}
		if d.ClusterIPs != nil {
			s.clusterIPs = *d.ClusterIPs
		}
		got[d.Service] = s
	}
	want := map[string]shown{
		orders:   {clusterIPs: []string{"10.96.0.15:8080", "[fd00:96::15]:8080"}, endpoints: 2},
		headless: {endpoints: 1},
		idle:     {clusterIPs: []string{"10.96.0.30:80"}, endpoints: 0},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("/debug/endpoints %s\ngot  %+v\nwant %+v", b, got, want)
	}

	// A control plane that sends no ClusterIPs: none shown.
	r.h.SetClusterIPs(nil)
	if b, _ := json.Marshal(r.h.Endpoints()); json.Valid(b) {
		var again []map[string]any
		_ = json.Unmarshal(b, &again)
		if len(again) != 2 {
			t.Errorf("without ClusterIPs, %d Services shown, want the 2 with endpoints: %s", len(again), b)
		}
		for _, s := range again {
			if _, ok := s["clusterIPs"]; ok {
				t.Errorf("without ClusterIPs: %v", s)
			}
		}
	}
}

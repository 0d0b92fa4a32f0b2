package outbound_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// TestBalanceUpgradeHeld: a WebSocket (an upgrade's 101) to a Service
// whose endpoints the control plane sent is load on its endpoint for its
// whole life, as an opaque connection is (TestBalanceTCPSpreadsConnections):
// in flight at the endpoint on /debug/endpoints while it is open, and no
// longer once it closes. Before, its count ended with the 101, and a pod
// holding many WebSockets looked idle to the balancer.
func TestBalanceUpgradeHeld(t *testing.T) {
	pod := switchUpstream(t, func(c net.Conn, br *bufio.Reader) { _, _ = io.Copy(c, br) })
	r := newRig(t, "", 0)
	const vip = "10.96.0.10:80" // the Service's port: only its number names the EDS resource
	r.h.SetEndpoints(map[string][]balancer.Target{ordersKey(vip): {{Addr: pod}}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: r.h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	inFlight := func() int { return ordersEndpoints(r, vip)[pod].InFlight }
	const open = 3
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range open {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET http://orders/ws HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("WebSocket %d: handshake answered %v, %v; want the endpoint's 101", i, resp, err)
		}
		// An echo through the relay: the switched connection is up.
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			t.Fatal(err)
		}
		if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("WebSocket %d: echoed %q, %v", i, line, err)
		}
	}
	if n := inFlight(); n != open {
		t.Fatalf("%d WebSockets open: %d in flight at their endpoint (%+v), want %d", open, n, ordersEndpoints(r, vip), open)
	}
	for _, c := range conns {
		c.Close()
	}
	if !proxytest.Poll(10*time.Second, 5*time.Millisecond, func() bool { return inFlight() == 0 }) {
		t.Fatalf("after every WebSocket closed, still %d in flight", inFlight())
	}
}

package webhook

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestAdminConnectionMetrics: the admin listener's resets (past a peer
// address's share) and evictions (a newcomer at the cap) are counted on
// /metrics, as the sidecar's admin port counts its own. Before, the
// controller counted only the webhook listener's, and a flood crowding
// out the kubelet's probes left no trace.
func TestAdminConnectionMetrics(t *testing.T) {
	// Two places, one per address: a second connection from one address
	// is reset, a third address's newcomer takes a holder's place.
	s, _, a := serverWith(t, func(s *Server) { s.adminMax, s.adminPerSource = 2, 1 })
	get := func(from string) (net.Conn, error) {
		return heldHealthz(&net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}, a.String())
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i, step := range []struct {
		from             string
		served           bool
		refused, evicted float64 // the counters after the step
	}{
		{"127.0.0.2", true, 0, 0},
		{"127.0.0.2", false, 1, 0}, // past its address's share: reset
		{"127.0.0.3", true, 1, 0},  // the cap
		{"127.0.0.4", true, 1, 1},  // takes an idle holder's place
	} {
		c, err := get(step.from)
		if (err == nil) != step.served {
			t.Fatalf("step %d, from %s: err %v, want served %v", i, step.from, err, step.served)
		}
		if c != nil {
			held = append(held, c)
		}
		// Read from the registry /metrics serves: a scrape over the admin
		// port would take a place itself.
		for name, want := range map[string]float64{
			"minimesh_injector_admin_connections_refused_total": step.refused,
			"minimesh_injector_admin_connections_evicted_total": step.evicted,
		} {
			if got := gathered(t, s.Metrics, name); got != want {
				t.Errorf("step %d, from %s: %s = %v, want %v", i, step.from, name, got, want)
			}
		}
	}
	if ref, ev := s.adminLn.Refused(), s.adminLn.Evicted(); ref != 1 || ev != 1 {
		t.Errorf("the listener refused %d and evicted %d, want 1 and 1", ref, ev)
	}
	// The webhook listener's counters stay its own.
	for _, name := range []string{"minimesh_injector_connections_refused_total", "minimesh_injector_connections_evicted_total"} {
		if got := gathered(t, s.Metrics, name); got != 0 {
			t.Errorf("%s = %v, want 0: the admin port's resets are not the webhook's", name, got)
		}
	}
	// And /metrics shows them (this scrape's own connection may evict
	// another; the names and types are what is checked).
	out := metrics(t, a)
	for _, want := range []string{
		"# TYPE minimesh_injector_admin_connections_refused_total counter\n",
		"# TYPE minimesh_injector_admin_connections_evicted_total counter\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
		}
	}
}

// gathered is the value of the unlabelled counter or gauge name in m's
// registry.
func gathered(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			t.Fatalf("%s: %d series, want 1", name, len(mf.GetMetric()))
		}
		mt := mf.GetMetric()[0]
		switch {
		case mt.GetCounter() != nil:
			return mt.GetCounter().GetValue()
		case mt.GetGauge() != nil:
			return mt.GetGauge().GetValue()
		}
		t.Fatalf("%s: %v, want a counter or a gauge", name, mf.GetType())
	}
	t.Fatalf("%s is not registered", name)
	return 0
}

// TestHeadFigure: on both ports an HTTP/1.1 request head (request line,
// header and the blank line) of up to maxHeaderBytes plus net/http's
// 4 KiB of buffer, 20,480 bytes, is read, and one byte more gets 431: the
// figure docs/injector.md and docs/operations.md give.
func TestHeadFigure(t *testing.T) {
	_, w, a := serverWith(t, func(*Server) {})
	const most = maxHeaderBytes + 4<<10
	dial := map[string]func() (net.Conn, error){
		"webhook": func() (net.Conn, error) {
			return tls.Dial("tcp", w.String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		},
		"admin": func() (net.Conn, error) { return net.Dial("tcp", a.String()) },
	}
	for _, tt := range []struct {
		port string
		head int
		want int
	}{
		{"webhook", most, http.StatusOK},
		{"webhook", most + 1, http.StatusRequestHeaderFieldsTooLarge},
		{"admin", most, http.StatusOK},
		{"admin", most + 1, http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(fmt.Sprintf("%s %d bytes", tt.port, tt.head), func(t *testing.T) {
			c, err := dial[tt.port]()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			const start = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
			req := start + strings.Repeat("x", tt.head-len(start)-len("\r\n\r\n")) + "\r\n\r\n"
			if _, err := io.WriteString(c, req); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("a %d-byte head: %v", len(req), err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("a %d-byte head: %d, want %d", len(req), resp.StatusCode, tt.want)
			}
		})
	}
}

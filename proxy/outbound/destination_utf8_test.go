package outbound_test

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestNonUTF8HostCountsAsOther: a request whose host is not UTF-8 is
// counted under destination "other" (docs/metrics.md), its breaker's
// gauge too, and mints no series of its own. Before, the sidecar's
// lowercasing turned the invalid byte into U+FFFD, a valid label:
// minimesh_requests_total{destination="ge\ufffdo:80"}.
func TestNonUTF8HostCountsAsOther(t *testing.T) {
	sc := startSidecar(t, "", nil)
	for i, raw := range []string{
		"GET http://ge\xffo:80/ok HTTP/1.0\r\n\r\n",
		"GET http://GE\xffO:80/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET http://ge\xfeo:80/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
	} {
		conn, err := net.Dial("tcp", sc.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write([]byte(raw)); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		resp.Body.Close()
		conn.Close()
		// The host resolves nowhere: the sidecar's own 502, recorded.
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("%q: %s, want the sidecar's 502", raw, resp.Status)
		}
		sc.waitMetric(float64(i+1), 5*time.Second, "minimesh_requests_total", "destination", "other")
	}
	for _, s := range sc.metrics() {
		if d, ok := s.Labels["destination"]; ok && d != "other" {
			t.Errorf("%s%v: a series of its own for a host that is not UTF-8", s.Name, s.Labels)
		}
	}
	if got := sc.metric("minimesh_circuit_breaker_state", "destination", "other", "state", "closed"); got != 1 {
		t.Errorf(`minimesh_circuit_breaker_state{destination="other",state="closed"} = %v, want 1`, got)
	}
}

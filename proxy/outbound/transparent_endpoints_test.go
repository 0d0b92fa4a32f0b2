package outbound_test

import (
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// TestTransparentHTTPBalancedByHost: a redirected request whose Host names
// a Service the control plane sent endpoints for is balanced over them, as
// one through HTTP_PROXY is, whatever address the app connected to (Istio's
// rule, docs/interception.md, "HTTP/1.x"); every spelling of the Service
// does. When the endpoints go away it goes to the original destination
// again. The policy and metrics are the Host's either way.
func TestTransparentHTTPBalancedByHost(t *testing.T) {
	for _, host := range []string{"orders", "orders.default", "orders.default.svc.cluster.local"} {
		t.Run(host, func(t *testing.T) {
			original := proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) { _, _ = io.WriteString(w, "original") })
			pod := proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) { _, _ = io.WriteString(w, "pod") })
			r := newRig(t, "", 0)
			_, port, _ := net.SplitHostPort(original.Host())
			key := "orders.default.svc.cluster.local:" + port
			r.h.SetEndpoints(map[string][]balancer.Target{key: {{Addr: pod.Host()}}})
			addr := r.redirectedServer(original.Host())
			get := func(want string) {
				t.Helper()
				resp, body := rawRoundTrip(t, addr, "GET /x HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
				if resp.StatusCode != 200 || string(body) != want {
					t.Fatalf("Host %s: %d %q, want 200 %q", host, resp.StatusCode, body, want)
				}
			}
			for range 3 {
				get("pod")
			}
			if n := original.Hits.Load(); n != 0 {
				t.Errorf("the original destination got %d requests while the Service had endpoints", n)
			}
			r.h.SetEndpoints(map[string][]balancer.Target{})
			get("original")
			r.waitMetric(4, "minimesh_requests_total", "destination", "orders:"+port, "code", "200")
		})
	}
}

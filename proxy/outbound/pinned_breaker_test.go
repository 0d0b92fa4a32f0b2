package outbound_test

import (
	"net"
	"net/http"
	"testing"

	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// TestRedirectedPodOfServiceBreaker: requests pinned to the pod their app
// connected to can go to no other pod, and ejection never moves them, so
// each of their failures counts for the Service's breaker though another
// pod serves: the breaker opens at consecutiveFailures, as for a
// destination of one pod. (One pod's run of failures counts once only
// where the balancer can send the next request elsewhere, docs/policy.md,
// "Circuit breaker"; between 5c3df7b and its fix of the same day pinned
// requests reached a dead pod 40 times of 40 with the breaker closed.)
func TestRedirectedPodOfServiceBreaker(t *testing.T) {
	podA := proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) { w.WriteHeader(http.StatusServiceUnavailable) })
	podB := namedPod(t, "B")
	_, port, _ := net.SplitHostPort(podA.Host())
	r := newRig(t, policyDoc("db", "db", "circuitBreaker: {consecutiveFailures: 5, openTimeout: 1h}"), 0)
	r.h.SetEndpoints(map[string][]balancer.Target{"db.default.svc.cluster.local:" + port: {{Addr: podA.Host()}, {Addr: podB.Host()}}})
	// Pod B serves (arrived just now: balancer.ArrivalGrace).
	addr := r.redirectedServer(podA.Host())
	for i := range 5 {
		resp, _ := rawRoundTrip(t, addr, "GET /x HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Minimesh-Error") != "" {
			t.Fatalf("request %d: %d %q, want pod A's own 503", i, resp.StatusCode, resp.Header.Get("X-Minimesh-Error"))
		}
	}
	resp, _ := rawRoundTrip(t, addr, "GET /x HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n")
	if got := resp.Header.Get("X-Minimesh-Error"); got != "circuit-open" {
		t.Errorf("request 6: %d, X-Minimesh-Error %q; want circuit-open after 5 pinned failures (pod A tried %d, B %d)",
			resp.StatusCode, got, podA.Hits.Load(), podB.Hits.Load())
	}
	if b := podB.Hits.Load(); b != 0 {
		t.Errorf("pod B got %d pinned requests, want none", b)
	}
}

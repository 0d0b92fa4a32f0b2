package outbound_test

import (
	"bufio"
	"net/http"
	"testing"
	"time"
)

// Found probing the resilience semantics (docs/policy.md, "Circuit
// breaker"); each test failed before its fix.

// TestBreakerStreamProbeDoesNotWedge: a half-open breaker's probe that
// is a stream which never ends (server-sent events, a watch) holds its
// place for openTimeout, not for the stream's life: then the next
// request is a probe, and its success closes the breaker. Before, every
// request got 503 circuit-open for as long as the stream lived.
func TestBreakerStreamProbeDoesNotWedge(t *testing.T) {
	u, healthy := recoveringUpstream(t, http.StatusInternalServerError, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/events" {
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = w.Write([]byte("data: hello\n\n"))
			w.(http.Flusher).Flush()
			hang(r)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	sc := quickBreakerSidecar(t, u, 1)
	c := sc.Client()
	for range 2 {
		if resp, _ := get(t, c, "http://"+geo+"/x"); resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("status %d, want 500", resp.StatusCode)
		}
	}
	healthy.Store(true)
	sc.waitBreakerState(geo, "half-open", 5*time.Second)
	resp, err := c.Get("http://" + geo + "/events") // the probe, a stream
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream probe: %d %s", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"))
	}
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "data: hello\n" {
		t.Fatalf("stream probe's first event: %q %v", line, err)
	}
	// The stream stays open; within a few openTimeouts a request gets
	// through as a probe and closes the breaker.
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, body := get(t, c, "http://"+geo+"/x")
		if resp.StatusCode == http.StatusOK && string(body) == "ok" {
			break
		}
		if resp.Header.Get("X-Minimesh-Error") != "circuit-open" {
			t.Fatalf("status %d %q, want 200 or circuit-open", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"))
		}
		if time.Now().After(deadline) {
			t.Fatalf("a stream probe kept the breaker %s for 5s (openTimeout 300ms): every request is refused", sc.breaker(geo).State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := sc.breaker(geo).State; st != "closed" {
		t.Fatalf("breaker %s after a successful probe, want closed", st)
	}
}

// TestBreakerCountsTimeoutLongerThanWindow: with failureRate, a try that
// times out after longer than the window is a failure all the same: a
// hanging upstream opens the breaker. Before, the outcome was dropped
// (counted where the try began, which had left the window), and the
// breaker of a destination that only ever timed out never opened.
func TestBreakerCountsTimeoutLongerThanWindow(t *testing.T) {
	u := newUpstream(t, func(_ http.ResponseWriter, r *http.Request, _ int64) { hang(r) })
	sc := startSidecar(t, policyDoc("geo", "geo-service", `
timeout: 400ms
circuitBreaker:
  consecutiveFailures: 1
  openTimeout: 30s
  failureRate: {threshold: 0.5, minRequests: 10, window: 100ms}
`), resolve(u.Host(), geo))
	c := sc.Client()
	resp, body := get(t, c, "http://"+geo+"/x")
	expectSidecarError(t, resp, body, http.StatusGatewayTimeout, "timeout", geo)
	sc.waitBreakerState(geo, "open", 2*time.Second)
	resp, body = get(t, c, "http://"+geo+"/x")
	expectCircuitOpen(t, resp, body, geo, 30)
	if got := u.hits.Load(); got != 1 {
		t.Fatalf("upstream saw %d requests, want 1", got)
	}
}

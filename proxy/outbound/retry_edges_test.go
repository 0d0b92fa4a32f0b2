package outbound_test

import (
	"net/http"
	"testing"
	"time"
)

// Found probing the resilience semantics (docs/policy.md, "Retries");
// each test failed before its fix.

// TestRetryNotIntoABackoffPastTheTimeout: a retry whose backoff would
// outlast the request's timeout is not tried ("timeout has time left"):
// the app gets the upstream's own answer at once, and no retry is
// counted or taken from the budget. Before, the sidecar counted a retry
// it never sent, waited out the timeout, and answered 504 in place of
// the upstream's 503. A backoff of an hour's full jitter is under the
// timeout's 2s once in 1,800.
func TestRetryNotIntoABackoffPastTheTimeout(t *testing.T) {
	for _, p := range []struct {
		name string
		opts []sidecarOpt
	}{{"fast", []sidecarOpt{withFastTransport()}}, {"std-transport", []sidecarOpt{withStdTransport()}}} {
		t.Run(p.name, func(t *testing.T) {
			u := newUpstream(t, status(http.StatusServiceUnavailable))
			sc := startSidecar(t, policyDoc("geo", "geo-service", `
timeout: 2s
retries: {attempts: 1, retryOn: ["503"], backoff: {base: 1h, max: 1h}}
circuitBreaker: {consecutiveFailures: 100}
`), resolve(u.Host(), geo), p.opts...)
			start := time.Now()
			resp, body := get(t, sc.Client(), "http://"+geo+"/x")
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Minimesh-Error") != "" || string(body) != "upstream says 503\n" {
				t.Fatalf("app got %d %q %q after %v, want the upstream's own 503", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), body, time.Since(start))
			}
			if got := u.hits.Load(); got != 1 {
				t.Errorf("upstream saw %d tries, want 1", got)
			}
			if got := sc.metric("minimesh_retries_total", "destination", geo); got != 0 {
				t.Errorf("retries_total = %v, want 0: no retry was sent", got)
			}
		})
	}
}

package outbound_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestH2RefusedHalfOpenProbe: a half-open breaker's probe that the
// upstream refuses unprocessed (RST_STREAM REFUSED_STREAM, a GOAWAY
// below it) and that is retried counts neither way: a refusal says one
// connection takes no more streams, nothing of whether the upstream is
// well again; the retry takes the probe's place and its success closes
// the breaker. Before, with halfOpenRequests 1, the retry was refused by
// the breaker (the refused probe still held the one place), the refusal
// was then counted a failure, and the breaker opened again for another
// openTimeout: the app got a 502 and the next request a 503. Not
// retried, the refusal is the app's answer (a 502) and counts as the
// failure it is: the breaker opens again.
func TestH2RefusedHalfOpenProbe(t *testing.T) {
	// More than the replay holds (MaxReplayBody): the request that opens
	// the breaker is refused and not sent again, a failure.
	big := bytes.Repeat([]byte("x"), 100<<10)
	unary := append([]byte{0, 0, 0, 4, 0}, bytes.Repeat([]byte("m"), 1024)...)
	for _, how := range []string{refuseRST, refuseGoAway} {
		for _, tc := range []struct {
			name, retries, path, ctype string
			body                       []byte
		}{
			{"retried POST", "retries:\n  attempts: 1\n  retryOn: [connect-failure]\n  backoff: {base: 1ms, max: 2ms}\n", "/charge", "text/plain", []byte("charge card 42")},
			{"retried gRPC", "retries:\n  attempts: 1\n  retryOn: [connect-failure]\n  backoff: {base: 1ms, max: 2ms}\n", "/pay.Payments/Charge", "application/grpc", unary},
			{"no retries", "", "/charge", "text/plain", []byte("charge card 42")},
		} {
			t.Run(how+"/"+tc.name, func(t *testing.T) {
				addr, up := refusingH2Upstream(t, how)
				const svc = "orders:8080"
				// openTimeout well above the few milliseconds a refusal and
				// its retry take, even on a loaded machine: a probe in
				// flight that long frees its place anyway.
				sc := startSidecar(t, policyDoc("orders", svc, "timeout: 10s\ncircuitBreaker:\n  consecutiveFailures: 1\n  openTimeout: 1s\n  halfOpenRequests: 1\n"+tc.retries), resolve(addr, svc))

				// The upstream refuses the first stream: the breaker opens.
				resp := postH2(t, sc, svc, "/upload", "text/plain", big)
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Minimesh-Error") != "connect-failure" {
					t.Fatalf("opening request: %d %q, want 502 connect-failure", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"))
				}
				if st := sc.breaker(svc).State; st != "open" {
					t.Fatalf("breaker %s after a refused request not sent again, want open", st)
				}
				sc.waitBreakerState(svc, "half-open", 10*time.Second)

				// The probe is the next first stream: refused too.
				up.streams.Store(0)
				resp = postH2(t, sc, svc, tc.path, tc.ctype, tc.body)
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if tc.retries != "" {
					if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Minimesh-Error") != "" {
						t.Fatalf("refused probe: %d %q %s, want the retry's 200", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), got)
					}
					if n := up.streams.Load(); n != 2 {
						t.Errorf("the upstream was sent %d streams, want 2: the refused probe and its retry", n)
					}
					if n := sc.metric("minimesh_retries_total", "destination", svc, "reason", "connect-failure"); n != 1 {
						t.Errorf("minimesh_retries_total{reason=connect-failure} = %v, want 1", n)
					}
				} else {
					if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Minimesh-Error") != "connect-failure" {
						t.Fatalf("refused probe: %d %q %s, want 502 connect-failure", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), got)
					}
					if st := sc.breaker(svc).State; st != "open" {
						t.Fatalf("breaker %s after a refused probe answered as a 502, want open", st)
					}
					m := sc.metrics()
					if got := m.value("minimesh_circuit_breaker_transitions_total", "destination", svc, "from", "half-open", "to", "open"); got != 1 {
						t.Errorf("transitions half-open->open = %v, want 1", got)
					}
					return
				}
				// The verdict of a try with a body comes as the body ends,
				// which the app may see a moment before the breaker hears.
				sc.waitBreakerState(svc, "closed", 10*time.Second)
				m := sc.metrics()
				for _, tr := range []struct {
					from, to string
					want     float64
				}{
					{"closed", "open", 1}, {"open", "half-open", 1}, {"half-open", "open", 0}, {"half-open", "closed", 1},
				} {
					if got := m.value("minimesh_circuit_breaker_transitions_total", "destination", svc, "from", tr.from, "to", tr.to); got != tr.want {
						t.Errorf("transitions %s->%s = %v, want %v", tr.from, tr.to, got, tr.want)
					}
				}
				if got := m.value("minimesh_circuit_breaker_rejected_total", "destination", svc); got != 0 {
					t.Errorf("rejected_total = %v, want 0: no try was refused by the breaker", got)
				}
			})
		}
	}
}

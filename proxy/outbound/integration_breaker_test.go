package outbound_test

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
)

// fastFail bounds the sidecar's own answer to a request its open breaker
// refuses: no upstream is contacted, so it is a loopback round trip. It
// is generous because CI machines are loaded; what proves the answer
// came from the sidecar is that the upstream's hit count did not move.
const fastFail = time.Second

// TestBreakerOpensOnNthFailure: with consecutiveFailures: 3 the upstream
// sees exactly three requests of a failing run; the fourth and fifth are
// answered by the sidecar at once, whatever the kind of failure.
func TestBreakerOpensOnNthFailure(t *testing.T) {
	const pol = `
circuitBreaker:
  consecutiveFailures: 3
  openTimeout: 30s
`
	type failing struct {
		addr      string
		hits      func() int64
		wantCode  int
		wantError string // X-Minimesh-Error of the three failures; "" for the upstream's own answer
	}
	cases := []struct {
		name   string
		policy string
		setup  func(t *testing.T) failing
	}{
		{"5xx", pol, func(t *testing.T) failing {
			u := newUpstream(t, status(http.StatusInternalServerError))
			return failing{u.Host(), u.hits.Load, http.StatusInternalServerError, ""}
		}},
		{"hang-timeout", "timeout: 300ms\n" + pol, func(t *testing.T) failing {
			u := newUpstream(t, func(_ http.ResponseWriter, r *http.Request, _ int64) { hang(r) })
			return failing{u.Host(), u.hits.Load, http.StatusGatewayTimeout, "timeout"}
		}},
		{"reset", pol, func(t *testing.T) failing {
			addr, hits := newResetUpstream(t)
			return failing{addr, hits.Load, http.StatusBadGateway, "reset"}
		}},
		{"connect-refused", pol, func(t *testing.T) failing {
			return failing{refused.Addr(t), func() int64 { return 0 }, http.StatusBadGateway, "connect-failure"}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.setup(t)
			sc := startSidecar(t, policyDoc("geo", "geo-service", tc.policy), resolve(f.addr, geo))
			c := sc.Client()
			for i := 1; i <= 3; i++ {
				resp, body := get(t, c, "http://"+geo+"/v1/geocode")
				if f.wantError != "" {
					expectSidecarError(t, resp, body, f.wantCode, f.wantError, geo)
				} else if resp.StatusCode != f.wantCode || resp.Header.Get("X-Minimesh-Error") != "" {
					t.Fatalf("request %d: %d %q, want the upstream's own %d", i, resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), f.wantCode)
				}
			}
			hitsBefore := f.hits()
			if tc.name != "connect-refused" && hitsBefore != 3 {
				t.Fatalf("upstream saw %d requests, want 3", hitsBefore)
			}
			if st := sc.breaker(geo); st.State != "open" || st.Policy != "geo" {
				t.Fatalf("breaker after 3 failures: %+v, want open under policy geo", st)
			}
			for i := 4; i <= 5; i++ {
				start := time.Now()
				resp, body := get(t, c, "http://"+geo+"/v1/geocode")
				if d := time.Since(start); d > fastFail {
					t.Errorf("request %d took %v, want a fast fail (< %v)", i, d, fastFail)
				}
				expectCircuitOpen(t, resp, body, geo, 30)
			}
			if got := f.hits(); got != hitsBefore {
				t.Fatalf("upstream saw %d requests after the breaker opened", got-hitsBefore)
			}
			m := sc.metrics()
			if got := m.value("minimesh_circuit_breaker_rejected_total", "destination", geo); got != 2 {
				t.Errorf("rejected_total = %v, want 2", got)
			}
			if got := m.value("minimesh_circuit_breaker_transitions_total", "destination", geo, "from", "closed", "to", "open"); got != 1 {
				t.Errorf("transitions closed->open = %v, want 1", got)
			}
			if got := m.value("minimesh_circuit_breaker_state", "destination", geo, "state", "open"); got != 1 {
				t.Errorf("state{open} = %v, want 1", got)
			}
			if got := m.value("minimesh_requests_total", "destination", geo, "code", "503"); got != 2 {
				t.Errorf("requests_total{code=503} = %v, want 2", got)
			}
		})
	}
}

// TestBreakerIgnores4xx: with the default failOn a 4xx is the client's
// mistake, not the upstream's failure.
func TestBreakerIgnores4xx(t *testing.T) {
	u := newUpstream(t, status(http.StatusNotFound))
	sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 3, openTimeout: 30s}"), resolve(u.Host(), geo))
	c := sc.Client()
	for range 6 {
		resp, _ := get(t, c, "http://"+geo+"/missing")
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("status %d, want the upstream's 404", resp.StatusCode)
		}
	}
	if got := u.hits.Load(); got != 6 {
		t.Fatalf("upstream saw %d requests, want 6", got)
	}
	st := sc.breaker(geo)
	want := breakerCounts{Requests: 6, TotalSuccesses: 6, ConsecutiveSuccesses: 6}
	if st.State != "closed" || st.Counts != want {
		t.Fatalf("breaker %+v, want closed with counts %+v", st, want)
	}
}

// TestBreakerCustomFailOn: failOn lists replace the default: only what
// they name counts, a 4xx included when named.
func TestBreakerCustomFailOn(t *testing.T) {
	for _, tc := range []struct {
		failOn      string
		counts      int // status that counts
		doesNot     int // 5xx or other status that does not
		notCounting int
	}{
		{`["503"]`, http.StatusServiceUnavailable, http.StatusInternalServerError, 4},
		{`["429", "502"]`, http.StatusTooManyRequests, http.StatusServiceUnavailable, 4},
	} {
		t.Run(tc.failOn, func(t *testing.T) {
			var code atomic.Int64
			code.Store(int64(tc.doesNot))
			u := newUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) { w.WriteHeader(int(code.Load())) })
			sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker:\n  consecutiveFailures: 3\n  openTimeout: 30s\n  failOn: "+tc.failOn), resolve(u.Host(), geo))
			c := sc.Client()
			for range tc.notCounting {
				if resp, _ := get(t, c, "http://"+geo+"/"); resp.StatusCode != tc.doesNot {
					t.Fatalf("status %d, want %d", resp.StatusCode, tc.doesNot)
				}
			}
			if st := sc.breaker(geo); st.State != "closed" || st.Counts.TotalFailures != 0 {
				t.Fatalf("after %d × %d: %+v, want closed without failures", tc.notCounting, tc.doesNot, st)
			}
			code.Store(int64(tc.counts))
			for range 3 {
				if resp, _ := get(t, c, "http://"+geo+"/"); resp.StatusCode != tc.counts {
					t.Fatalf("status %d, want %d", resp.StatusCode, tc.counts)
				}
			}
			resp, body := get(t, c, "http://"+geo+"/")
			expectCircuitOpen(t, resp, body, geo, 30)
			if got, want := u.hits.Load(), int64(tc.notCounting+3); got != want {
				t.Fatalf("upstream saw %d requests, want %d", got, want)
			}
		})
	}
}

// TestBreakerHalfOpenProbes: after openTimeout exactly halfOpenRequests
// probes reach the upstream, concurrent requests beyond them fail fast
// (while the probes are still held by the upstream), and the probes'
// successes close the breaker.
func TestBreakerHalfOpenProbes(t *testing.T) {
	const probes, extra = 3, 4
	probesGo := make(chan struct{}) // closed once every extra request was refused
	u, healthy := recoveringUpstream(t, http.StatusInternalServerError, func(w http.ResponseWriter, r *http.Request) {
		// Slow but successful: the probes stay in flight until the other
		// requests have had their answers.
		select {
		case <-probesGo:
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	sc := quickBreakerSidecar(t, u, probes)
	c := sc.Client()
	url := "http://" + geo + "/v1/geocode"

	for range 2 {
		if resp, _ := get(t, c, url); resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("status %d, want 500", resp.StatusCode)
		}
	}
	for range 2 { // open: answered by the sidecar
		resp, body := get(t, c, url)
		expectCircuitOpen(t, resp, body, geo, 1)
	}
	if got := u.hits.Load(); got != 2 {
		t.Fatalf("upstream saw %d requests while failing and open, want 2", got)
	}
	healthy.Store(true)
	sc.waitBreakerState(geo, "half-open", 2*time.Second)

	type result struct {
		code int
		kind string
	}
	results := make(chan result, probes+extra)
	for range probes + extra {
		go func() {
			resp, err := c.Get(url)
			if err != nil {
				t.Errorf("GET: %v", err)
				results <- result{}
				return
			}
			resp.Body.Close()
			results <- result{resp.StatusCode, resp.Header.Get("X-Minimesh-Error")}
		}()
	}
	var ok, open int
	for range probes + extra {
		r := <-results
		switch {
		case r.code == http.StatusOK:
			ok++
			if open < extra {
				t.Errorf("a probe finished before the %d extra requests were refused: they waited for the probes", extra)
			}
		case r.code == http.StatusServiceUnavailable && r.kind == "circuit-open":
			open++
			if open == extra {
				close(probesGo)
			}
		default:
			t.Errorf("unexpected answer %d %q", r.code, r.kind)
		}
	}
	if ok != probes || open != extra {
		t.Fatalf("half-open: %d probes succeeded and %d were refused, want %d and %d", ok, open, probes, extra)
	}
	if got := u.hits.Load(); got != 2+probes {
		t.Fatalf("upstream saw %d probes, want exactly %d", got-2, probes)
	}
	if st := sc.breaker(geo); st.State != "closed" {
		t.Fatalf("breaker %s after %d successful probes, want closed", st.State, probes)
	}

	m := sc.metrics()
	for _, tr := range []struct {
		from, to string
		want     float64
	}{
		{"closed", "open", 1}, {"open", "half-open", 1}, {"half-open", "closed", 1},
		{"half-open", "open", 0},
	} {
		if got := m.value("minimesh_circuit_breaker_transitions_total", "destination", geo, "from", tr.from, "to", tr.to); got != tr.want {
			t.Errorf("transitions %s->%s = %v, want %v", tr.from, tr.to, got, tr.want)
		}
	}
	for state, want := range map[string]float64{"closed": 1, "open": 0, "half-open": 0} {
		if got := m.value("minimesh_circuit_breaker_state", "destination", geo, "state", state); got != want {
			t.Errorf("state{%s} = %v, want %v", state, got, want)
		}
	}
	if got := m.value("minimesh_circuit_breaker_rejected_total", "destination", geo); got != 2+extra {
		t.Errorf("rejected_total = %v, want %d", got, 2+extra)
	}
	if got := m.value("minimesh_requests_total", "destination", geo, "code", "200"); got != probes {
		t.Errorf("requests_total{code=200} = %v, want %d", got, probes)
	}
}

// TestBreakerFailedProbeReopens: one failed probe opens the breaker
// again for another openTimeout; later successful probes close it.
func TestBreakerFailedProbeReopens(t *testing.T) {
	u, healthy := recoveringUpstream(t, http.StatusBadGateway, func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})
	sc := quickBreakerSidecar(t, u, 2)
	c := sc.Client()
	url := "http://" + geo + "/"
	for range 2 {
		get(t, c, url)
	}
	sc.waitBreakerState(geo, "half-open", 2*time.Second)
	if resp, _ := get(t, c, url); resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Minimesh-Error") != "" {
		t.Fatalf("probe: %d %q, want the upstream's own 502", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"))
	}
	if st := sc.breaker(geo); st.State != "open" {
		t.Fatalf("breaker %s after a failed probe, want open", st.State)
	}
	resp, body := get(t, c, url)
	expectCircuitOpen(t, resp, body, geo, 1)
	if got := u.hits.Load(); got != 3 {
		t.Fatalf("upstream saw %d requests, want 3 (2 failures, 1 probe)", got)
	}

	healthy.Store(true)
	sc.waitBreakerState(geo, "half-open", 2*time.Second)
	for range 2 {
		if resp, _ := get(t, c, url); resp.StatusCode != http.StatusOK {
			t.Fatalf("probe status %d, want 200", resp.StatusCode)
		}
	}
	if st := sc.breaker(geo); st.State != "closed" {
		t.Fatalf("breaker %s after 2 good probes, want closed", st.State)
	}
	m := sc.metrics()
	for _, tr := range []struct {
		from, to string
		want     float64
	}{
		{"closed", "open", 1}, {"open", "half-open", 2}, {"half-open", "open", 1}, {"half-open", "closed", 1},
	} {
		if got := m.value("minimesh_circuit_breaker_transitions_total", "destination", geo, "from", tr.from, "to", tr.to); got != tr.want {
			t.Errorf("transitions %s->%s = %v, want %v", tr.from, tr.to, got, tr.want)
		}
	}
	if got := m.value("minimesh_circuit_breaker_rejected_total", "destination", geo); got != 1 {
		t.Errorf("rejected_total = %v, want 1", got)
	}
}

// TestBreakerReset: POST /debug/breakers/reset?destination=D closes an
// open breaker at once; the next request reaches the upstream.
func TestBreakerReset(t *testing.T) {
	var healthy atomic.Bool
	u := newUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) {
		if !healthy.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 2, openTimeout: 30s}"), resolve(u.Host(), geo))
	c := sc.Client()
	for range 2 {
		get(t, c, "http://"+geo+"/")
	}
	resp, body := get(t, c, "http://"+geo+"/")
	expectCircuitOpen(t, resp, body, geo, 30)

	reset := func(dest string) int {
		resp, err := sc.admin.Post("http://"+sc.Admin+"/debug/breakers/reset?destination="+dest, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := reset("nowhere:1"); code != http.StatusNotFound {
		t.Fatalf("reset of an unknown destination: %d, want 404", code)
	}
	if code := reset(geo); code != http.StatusOK {
		t.Fatalf("reset: %d, want 200", code)
	}
	if st := sc.breaker(geo); st.State != "closed" {
		t.Fatalf("breaker %s after reset, want closed", st.State)
	}
	healthy.Store(true)
	if resp, _ := get(t, c, "http://"+geo+"/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("after reset: status %d, want 200", resp.StatusCode)
	}
	if got := u.hits.Load(); got != 3 {
		t.Fatalf("upstream saw %d requests, want 3", got)
	}
	if got := sc.metric("minimesh_circuit_breaker_transitions_total", "destination", geo, "from", "open", "to", "closed"); got != 1 {
		t.Errorf("transitions open->closed = %v, want 1", got)
	}
}

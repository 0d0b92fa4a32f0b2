package outbound_test

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// crashPods are four endpoints of geo-service; the last holds every
// request it gets until crash, then aborts them all at once (its
// connections reset, no answer) and every later one as it comes: a pod
// that dies with its calls in flight.
type crashPods struct {
	ups   []*upstream
	held  atomic.Int64 // requests the crashing pod holds or held
	crash chan struct{}
}

func newCrashPods(t *testing.T) *crashPods {
	t.Helper()
	p := &crashPods{crash: make(chan struct{})}
	for i := range 4 {
		dying := i == 3
		p.ups = append(p.ups, newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
			if !dying {
				fmt.Fprintf(w, "pod %d", i)
				return
			}
			p.held.Add(1)
			select {
			case <-p.crash:
			case <-r.Context().Done():
			}
			panic(http.ErrAbortHandler)
		}))
	}
	return p
}

func (p *crashPods) set(sc *testSidecar) {
	ts := make([]balancer.Target, len(p.ups))
	for i, u := range p.ups {
		ts[i] = balancer.Target{Addr: u.Host()}
	}
	sc.S.Handler().SetEndpoints(map[string][]balancer.Target{geoEDS: ts})
}

// TestBreakerOnePodsBurst: one pod of four dies with six calls in flight,
// and nothing else is in flight, so that the six failures reach the
// breaker in a row. They are one endpoint's run: the pod is ejected
// (outlierDetection), the destination's breaker stays closed
// (consecutiveFailures counts the run once), and every later call is
// served by the three pods left. Before 2026-12-07 the six failures in a
// row opened the breaker of the whole service, and for its openTimeout
// every call was refused 503 circuit-open though three pods served.
func TestBreakerOnePodsBurst(t *testing.T) {
	pods := newCrashPods(t)
	// The defaults: consecutiveFailures 5 for the breaker and for
	// ejection, no retries.
	sc := startSidecar(t, policyDoc("geo", "geo-service", ""), nil, withNamespace("shop"))
	pods.set(sc)
	c := sc.Client()

	// Calls until the dying pod holds six; the others answer at once.
	var wg sync.WaitGroup
	var crashed atomic.Int64
	for sent := 0; pods.held.Load() < 6; sent++ {
		if sent == 5000 {
			t.Fatalf("the dying pod got %d of %d calls", pods.held.Load(), sent)
		}
		held := pods.held.Load()
		wg.Add(1)
		done := make(chan struct{})
		go func() {
			defer wg.Done()
			defer close(done)
			resp, err := c.Get("http://" + geo + "/")
			if err != nil {
				t.Errorf("call: %v", err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				crashed.Add(1)
			}
		}()
		// One call at a time on the healthy pods: wait for this one to
		// end unless the dying pod holds it.
		proxytest.Poll(5*time.Second, time.Millisecond, func() bool {
			select {
			case <-done:
				return true
			default:
				return pods.held.Load() > held
			}
		})
	}
	close(pods.crash)
	wg.Wait()
	if got := crashed.Load(); got != 6 {
		t.Fatalf("%d calls failed as the pod died, want its 6", got)
	}
	if st := sc.breaker(geo); st.State != "closed" {
		t.Fatalf("the breaker is %s after one pod's six failures (counts %+v), want closed: three pods serve", st.State, st.Counts)
	}
	if got := sc.metric("minimesh_endpoint_ejections_total", "destination", geo); got != 1 {
		t.Errorf("minimesh_endpoint_ejections_total = %v, want 1: the dead pod", got)
	}
	for i := range 40 {
		resp, body := get(t, c, "http://"+geo+"/")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("call %d after the crash: %d %q, want 200 from a pod that serves", i, resp.StatusCode, body)
		}
	}
}

// TestBreakerWholeServiceFails: when every pod fails, the failures are
// the destination's and the breaker opens as before: by the time each
// pod has failed once, or five pods have, every further failure counts.
func TestBreakerWholeServiceFails(t *testing.T) {
	pods := newPods(t, 4)
	for _, p := range pods {
		p.fail.Store(true)
	}
	sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {openTimeout: 1h}"), nil, withNamespace("shop"))
	setPods(sc, pods)
	c := sc.Client()
	failures := 0
	for ; failures < 60; failures++ {
		resp, body := get(t, c, "http://"+geo+"/")
		if resp.StatusCode == http.StatusServiceUnavailable {
			expectCircuitOpen(t, resp, body, geo, 3600)
			break
		}
		if resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("call %d: %d %q, want the pods' 500", failures, resp.StatusCode, body)
		}
	}
	t.Logf("the breaker opened after %d failures (pods tried %v)", failures, hitsOf(pods))
	// The 4 pods' first failures count, and each one after them once
	// all 4 have failed; a pod untried yet delays it (10 here, with 4 pods,
	// was typical; 5 before 2026-12-07), at most until 2 pods are ejected
	// and the last untried one is drawn.
	if failures < 5 || failures > 40 {
		t.Errorf("the breaker opened after %d failures of a service failing as a whole, want 5 to 40", failures)
	}
}

// TestBreakerHungPodWholeOutage: three pods answer 500 and the fourth
// takes calls and never answers, its callers giving up at 100 ms: no pod
// serves, and the breaker opens. The hung pod's tries end unjudged, and
// an endpoint counts as serving only on a recent success (or for
// balancer.ArrivalGrace after it arrived, untried). Between 5c3df7b and
// the fix of the same day the hung pod "served" for ever: the dead pods'
// failures were each one's own, and 388 of 400 calls failed with the
// breaker closed.
func TestBreakerHungPodWholeOutage(t *testing.T) {
	pods := newPods(t, 3)
	for _, p := range pods {
		p.fail.Store(true)
	}
	hung := newUpstream(t, func(_ http.ResponseWriter, r *http.Request, _ int64) { hang(r) })
	ts := []balancer.Target{{Addr: hung.Host()}}
	for _, p := range pods {
		ts = append(ts, balancer.Target{Addr: p.Host()})
	}
	sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {openTimeout: 1h}"), nil, withNamespace("shop"))
	sc.S.Handler().SetEndpoints(map[string][]balancer.Target{geoEDS: ts})
	c := sc.Client()
	c.Timeout = 100 * time.Millisecond
	begin := time.Now()
	calls, gaveUp := 0, 0
	for ; ; calls++ {
		if calls == 20000 || time.Since(begin) > 10*time.Second {
			t.Fatalf("the breaker is %s after %d calls in %v (%d given up on the hung pod), want open: no pod serves",
				sc.breaker(geo).State, calls, time.Since(begin).Round(time.Millisecond), gaveUp)
		}
		resp, err := c.Get("http://" + geo + "/")
		if err != nil {
			gaveUp++
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("X-Minimesh-Error") == "circuit-open" {
			break
		}
		if resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("call %d: %d, want the pods' 500", calls, resp.StatusCode)
		}
	}
	t.Logf("the breaker opened after %d calls in %v (%d given up on the hung pod)", calls, time.Since(begin).Round(time.Millisecond), gaveUp)
}

package outbound_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/balancer"
)

// balanceTransports are the two ways a try goes upstream: what holds for
// the balancer's endpoints holds on both (docs/architecture.md).
var balanceTransports = []struct {
	name string
	opt  sidecarOpt
}{
	{"fast", withFastTransport()},
	{"http.Transport", withStdTransport()},
}

type debugEndpoint struct {
	Address             string     `json:"address"`
	InFlight            int        `json:"inFlight"`
	ConsecutiveFailures int        `json:"consecutiveFailures"`
	EjectedUntil        *time.Time `json:"ejectedUntil"`
}

// endpointsOf is /debug/endpoints' list for geo-service.
func endpointsOf(sc *testSidecar) map[string]debugEndpoint {
	var all []struct {
		Service   string          `json:"service"`
		Endpoints []debugEndpoint `json:"endpoints"`
	}
	sc.getJSON("/debug/endpoints", &all)
	out := map[string]debugEndpoint{}
	for _, s := range all {
		if s.Service == geoEDS {
			for _, e := range s.Endpoints {
				out[e.Address] = e
			}
		}
	}
	return out
}

// TestBalanceSelfEndpoint: an endpoint the control plane sends that is
// the sidecar's own address (a Service whose targetPort is a sidecar
// port) is never dialled, and it is the endpoint's failure, not the
// app's: a connect failure, retried on another endpoint whatever the
// method, counted toward its ejection; with no other endpoint the app
// gets 502 connect-failure naming it. Before, the app got 403 forbidden
// for one try in two, never retried, and the endpoint was never ejected.
func TestBalanceSelfEndpoint(t *testing.T) {
	for _, tr := range balanceTransports {
		t.Run(tr.name, func(t *testing.T) {
			pods := newPods(t, 1)
			sc := startSidecar(t, policyDoc("geo", "geo-service", `
retries: {attempts: 1, retryOn: [connect-failure], backoff: {base: 1ms, max: 1ms}}
circuitBreaker: {consecutiveFailures: 1000}
outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 1h, maxEjectionPercent: 50}
`), nil, withNamespace("shop"), tr.opt)
			self := sc.Addr
			sc.S.Handler().SetEndpoints(map[string][]balancer.Target{geoEDS: {{Addr: self}, {Addr: pods[0].Host()}}})
			c := sc.Client()
			for i := range 40 {
				method := http.MethodGet
				if i%2 == 1 {
					method = http.MethodPost // not idempotent: retried only as never sent
				}
				req, _ := http.NewRequest(method, "http://"+geo+"/", strings.NewReader("x"))
				resp, body := fetch(t, c, req)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("request %d (%s): %d %s %q, want every request served by the other endpoint", i, method, resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), body)
				}
			}
			if e := endpointsOf(sc)[self]; e.EjectedUntil == nil {
				t.Errorf("the sidecar's own address as an endpoint: %+v, want it ejected after 2 refusals", e)
			}

			// Alone, it is the Service's one endpoint: a connect failure.
			sc.S.Handler().SetEndpoints(map[string][]balancer.Target{geoEDS: {{Addr: self}}})
			resp, body := get(t, c, "http://"+geo+"/")
			e := expectSidecarError(t, resp, body, http.StatusBadGateway, "connect-failure", geo)
			if !strings.Contains(e.Message, self) {
				t.Errorf("message %q does not name the endpoint %s", e.Message, self)
			}
		})
	}
}

// TestBalanceAbandonedTryKeepsFailureRun: a try whose client went away
// says nothing about the endpoint, as it says nothing to the breaker: it
// does not end the endpoint's run of failures. Before, it counted as a
// success, and a pod failing every try between clients that gave up was
// never ejected.
func TestBalanceAbandonedTryKeepsFailureRun(t *testing.T) {
	for _, tr := range balanceTransports {
		t.Run(tr.name, func(t *testing.T) {
			arrived := make(chan struct{}, 1)
			p := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
				if r.URL.Path == "/hang" {
					arrived <- struct{}{}
					hang(r)
					return
				}
				w.WriteHeader(http.StatusInternalServerError)
			})
			sc := startSidecar(t, policyDoc("geo", "geo-service", `
circuitBreaker: {consecutiveFailures: 1000}
outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 1h}
`), nil, withNamespace("shop"), tr.opt)
			sc.S.Handler().SetEndpoints(map[string][]balancer.Target{geoEDS: {{Addr: p.Host()}}})
			c := sc.Client()
			if resp, _ := get(t, c, "http://"+geo+"/"); resp.StatusCode != http.StatusInternalServerError {
				t.Fatalf("first try: %d, want the pod's 500", resp.StatusCode)
			}
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+geo+"/hang", nil)
			errc := make(chan error, 1)
			go func() {
				resp, err := c.Do(req)
				if err == nil {
					resp.Body.Close()
					err = fmt.Errorf("got %d", resp.StatusCode)
				}
				errc <- err
			}()
			<-arrived
			cancel()
			<-errc
			// The sidecar ends the abandoned try once it sees the client go.
			deadline := time.Now().Add(5 * time.Second)
			for endpointsOf(sc)[p.Host()].InFlight != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the abandoned try is still in flight: %+v", endpointsOf(sc))
				}
				time.Sleep(5 * time.Millisecond)
			}
			if e := endpointsOf(sc)[p.Host()]; e.ConsecutiveFailures != 1 {
				t.Errorf("after a failure and an abandoned try: %+v, want the run of failures at 1", e)
			}
			if resp, _ := get(t, c, "http://"+geo+"/"); resp.StatusCode != http.StatusInternalServerError {
				t.Fatalf("third try: %d, want the pod's 500", resp.StatusCode)
			}
			if e := endpointsOf(sc)[p.Host()]; e.EjectedUntil == nil {
				t.Errorf("after two failures with an abandoned try between them: %+v, want the endpoint ejected", e)
			}
			if got := sc.metric("minimesh_endpoint_ejections_total", "destination", geo); got != 1 {
				t.Errorf("minimesh_endpoint_ejections_total = %v, want 1", got)
			}
		})
	}
}

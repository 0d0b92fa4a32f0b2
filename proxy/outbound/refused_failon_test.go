package outbound_test

import (
	"net/http"
	"testing"

	"github.com/minimesh/minimesh/internal/refused"
)

// TestRefusedEndpointEjectedWhateverFailOn: with connect-failure left out
// of failOn, an endpoint that refuses every connection is still its own
// failure each time, and ejected after 5 of them: nothing reached it,
// whatever the breaker is told to count. Before this rule a refusal was a
// success for such a policy's endpoint (failOn decides both): never
// ejected, 0.05 ms fast, it drew about half the picks, each dialled twice
// since its calls went elsewhere, unseen by the app.
func TestRefusedEndpointEjectedWhateverFailOn(t *testing.T) {
	for _, tr := range balanceTransports {
		t.Run(tr.name, func(t *testing.T) {
			pods := echoPods(t, 2)
			gone := refused.Addr(t)
			sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {failOn: [5xx]}"), nil, withNamespace("shop"), tr.opt)
			setGeo(sc, pods[0].Host(), gone, pods[1].Host())
			c := sc.Client()
			const calls = 300
			for i := range calls {
				if resp, body := get(t, c, "http://"+geo+"/"); resp.StatusCode != http.StatusOK {
					t.Fatalf("call %d: %d %q, want a pod's answer", i, resp.StatusCode, body)
				}
			}
			if e := endpointsOf(sc)[gone]; e.EjectedUntil == nil {
				t.Errorf("the refused endpoint: %+v, want it ejected after 5 refusals", e)
			}
			if got := sc.metric("minimesh_retries_total", "destination", geo, "reason", "connect-failure"); got != 5 {
				t.Errorf(`minimesh_retries_total{reason="connect-failure"} = %v, want 5: the refusals until the ejection`, got)
			}
			if b := sc.breaker(geo); b.State != "closed" || b.Counts.TotalFailures != 0 {
				t.Errorf("breaker %s %+v, want closed with no failure (failOn: [5xx])", b.State, b.Counts)
			}
		})
	}
}

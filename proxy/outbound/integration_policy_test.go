package outbound_test

import (
	"net/http"
	"testing"
)

// TestPolicyMatchesServiceSpellings: a policy for geo-service applies to
// the short, namespaced and fully qualified names of the service in the
// sidecar's namespace, and they share one breaker: failures spread over
// the three spellings open it. Other destinations get the "*" policy,
// each its own breaker.
func TestPolicyMatchesServiceSpellings(t *testing.T) {
	geoUp := newUpstream(t, status(http.StatusInternalServerError))
	otherUp := newUpstream(t, status(http.StatusInternalServerError))
	spellings := []string{"geo-service:8000", "geo-service.default:8000", "geo-service.default.svc.cluster.local:8000"}
	res := resolve(geoUp.Host(), spellings...)
	for k, v := range resolve(otherUp.Host(), "weather-service:8000", "api.example.com:80") {
		res[k] = v
	}
	sc := startSidecar(t,
		policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 3, openTimeout: 30s}")+
			policyDoc("default", "*", "circuitBreaker: {consecutiveFailures: 2, openTimeout: 30s}"),
		res)
	c := sc.Client()

	for _, s := range spellings { // one failure under each name
		if resp, _ := get(t, c, "http://"+s+"/"); resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("%s: status %d, want the upstream's 500", s, resp.StatusCode)
		}
	}
	for _, s := range spellings { // all refused: it is one breaker
		resp, body := get(t, c, "http://"+s+"/")
		expectCircuitOpen(t, resp, body, geo, 30)
	}
	if got := geoUp.hits.Load(); got != 3 {
		t.Fatalf("geo upstream saw %d requests, want 3", got)
	}

	for _, dest := range []string{"weather-service:8000", "api.example.com:80"} {
		for range 2 {
			if resp, _ := get(t, c, "http://"+dest+"/"); resp.StatusCode != http.StatusInternalServerError {
				t.Fatalf("%s: status %d, want 500", dest, resp.StatusCode)
			}
		}
		resp, body := get(t, c, "http://"+dest+"/")
		expectCircuitOpen(t, resp, body, dest, 30)
	}
	if got := otherUp.hits.Load(); got != 4 {
		t.Fatalf("other upstream saw %d requests, want 4 (2 per destination)", got)
	}

	bs := sc.breakers()
	want := map[string]string{geo: "geo", "weather-service:8000": "default", "api.example.com:80": "default"}
	if len(bs) != len(want) {
		t.Fatalf("/debug/breakers lists %v, want exactly %v", keys(bs), keys(want))
	}
	for dest, pol := range want {
		if b, ok := bs[dest]; !ok || b.Policy != pol || b.State != "open" {
			t.Errorf("%s: %+v, want open under policy %s", dest, b, pol)
		}
	}
	if got := sc.metric("minimesh_circuit_breaker_rejected_total", "destination", geo); got != 3 {
		t.Errorf("rejected_total{geo} = %v, want 3", got)
	}
}

// TestPolicyNamespace: with Config.Namespace set, the short name and the
// sidecar's own namespace match the policy of a bare service name; the
// same name in another namespace is another service, under "*".
func TestPolicyNamespace(t *testing.T) {
	u := newUpstream(t, status(http.StatusInternalServerError))
	sc := startSidecar(t,
		policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 2, openTimeout: 30s}")+
			policyDoc("default", "*", "circuitBreaker: {consecutiveFailures: 5, openTimeout: 30s}"),
		resolve(u.Host(), "geo-service:8000", "geo-service.bakery:8000", "geo-service.default:8000"),
		withNamespace("bakery"))
	c := sc.Client()
	get(t, c, "http://geo-service.bakery:8000/")
	get(t, c, "http://geo-service:8000/")
	resp, body := get(t, c, "http://geo-service.bakery:8000/")
	expectCircuitOpen(t, resp, body, geo, 30)

	for range 2 { // another namespace: another breaker, under "*"
		if resp, _ := get(t, c, "http://geo-service.default:8000/"); resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("geo-service.default: status %d, want the upstream's 500", resp.StatusCode)
		}
	}
	b := sc.breaker("geo-service.default:8000")
	if b.Policy != "default" || b.State != "closed" || b.Counts.ConsecutiveFailures != 2 {
		t.Fatalf("geo-service.default: %+v, want closed under policy default with 2 failures", b)
	}
	if got := u.hits.Load(); got != 4 {
		t.Fatalf("upstream saw %d requests, want 4", got)
	}
}

package outbound_test

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// TestBreakerKeptAcrossReload: a reload keeps a service's breaker, open
// as it is, when the breaker settings in force for it are the same
// whatever the policy is called or however its service is spelled
// (docs/architecture.md, "Failure and reload"; metadata.name is for
// display, docs/policy.md). Renaming the policy or respelling its
// service closed the open breaker: the next request went to the dead
// upstream. Settings that change start a closed breaker.
func TestBreakerKeptAcrossReload(t *testing.T) {
	const ns = "shop"
	breakerSpec := "circuitBreaker:\n  consecutiveFailures: 2\n  openTimeout: 1h"
	geoPolicy := func(name, service, extra string) string {
		return policyDoc(name, service, breakerSpec+"\n"+extra)
	}
	// A "*" policy with geo's breaker settings, so that geo's breaker
	// settings stay the same when its own policy goes.
	star := policyDoc("fallback", "*", breakerSpec)
	other := policyDoc("cart", "cart", "")

	type step struct {
		policies string
		want     string // geo's breaker after the reload: "open" (kept) or "closed"
	}
	for _, tc := range []struct {
		name  string
		start string
		steps []step
	}{
		{"rename only", geoPolicy("geo", "geo-service", ""), []step{
			{geoPolicy("geo-v2", "geo-service", ""), "open"},
		}},
		{"respell service only", geoPolicy("geo", "geo-service", ""), []step{
			{geoPolicy("geo", "geo-service.shop.svc.cluster.local", ""), "open"},
			{geoPolicy("geo", "GEO-Service.shop.", ""), "open"},
		}},
		{"rename and respell", geoPolicy("geo", "geo-service", ""), []step{
			{geoPolicy("geo-v2", "geo-service.shop", "timeout: 5s"), "open"},
		}},
		// "one whose settings changed starts closed"
		{"breaker settings changed", geoPolicy("geo", "geo-service", ""), []step{
			{policyDoc("geo", "geo-service", "circuitBreaker:\n  consecutiveFailures: 3\n  openTimeout: 1h"), "closed"},
		}},
		// Removed, geo falls to the built-in default (5 failures, 60s):
		// other settings, a closed breaker; re-added, geo's own again.
		{"removed and re-added, settings change", geoPolicy("geo", "geo-service", ""), []step{
			{other, "closed"},
			{other + geoPolicy("geo", "geo-service", ""), "closed"},
		}},
		// Removed, geo falls to "*" with the same breaker settings: the
		// service's settings never changed, nor does its breaker.
		{"removed and re-added, same settings", star + geoPolicy("geo", "geo-service", "timeout: 5s"), []step{
			{star, "open"},
			{star + geoPolicy("geo-again", "geo-service", ""), "open"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t, status(http.StatusServiceUnavailable))
			sc := startSidecar(t, tc.start, resolve(u.Host(), geo), withNamespace(ns))
			c := sc.Client()
			sent := 0
			for i, st := range tc.steps {
				sent += openBreaker(t, sc, c)
				hits := u.hits.Load()

				reloadPolicies(t, sc, st.policies)
				b := sc.breaker(geo)
				if b.State != st.want {
					t.Fatalf("reload %d: geo's open breaker is %s after it, want %s", i+1, b.State, st.want)
				}
				if want := policyFor(t, st.policies, ns); b.Policy != want {
					t.Errorf("reload %d: /debug/breakers names policy %q, want the one in force, %q", i+1, b.Policy, want)
				}
				resp, body := get(t, c, "http://"+geo+"/")
				sent++
				if st.want == "open" {
					expectSidecarError(t, resp, body, http.StatusServiceUnavailable, "circuit-open", geo)
					if got := u.hits.Load(); got != hits {
						t.Fatalf("reload %d: the upstream saw %d requests past the open breaker", i+1, got-hits)
					}
				} else if got := u.hits.Load(); got != hits+1 || resp.Header.Get("X-Minimesh-Error") != "" {
					t.Fatalf("reload %d: a closed breaker: got %d %q and %d upstream requests, want the upstream's 503",
						i+1, resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), got-hits)
				}
			}
			// The series stay the destination's, whatever the policy is
			// called: every request the app sent counts under geo.
			sc.waitMetric(float64(sent), 5*time.Second, "minimesh_requests_total", "destination", geo)
		})
	}
}

// openBreaker sends requests to geo, whose upstream fails, until the
// sidecar answers circuit-open, and returns how many it sent.
func openBreaker(t *testing.T, sc *testSidecar, c *http.Client) int {
	t.Helper()
	for n := 1; n <= 20; n++ {
		resp, _ := get(t, c, "http://"+geo+"/")
		if resp.Header.Get("X-Minimesh-Error") == "circuit-open" {
			sc.waitBreakerState(geo, "open", time.Second)
			return n
		}
	}
	t.Fatalf("geo's breaker did not open: %+v", sc.breaker(geo))
	return 0
}

// reloadPolicies replaces the policy file, asks for a reload as SIGHUP
// does, and waits until /debug/config shows the new set, settings and
// all: the outbound side has it then (it is applied first).
func reloadPolicies(t *testing.T, sc *testSidecar, policies string) {
	t.Helper()
	proxytest.ReplaceFile(t, filepath.Join(sc.Dir, "policies.yaml"), policies)
	sc.S.Reload()
	want := asShown(t, decodePolicies(t, policies))
	var got []map[string]any
	if !proxytest.Poll(5*time.Second, 10*time.Millisecond, func() bool {
		var conf struct {
			LastError string           `json:"lastError"`
			Policies  []map[string]any `json:"policies"`
		}
		sc.getJSON("/debug/config", &conf)
		if conf.LastError != "" {
			t.Fatalf("policies did not load: %s", conf.LastError)
		}
		got = withoutSource(conf.Policies)
		return reflect.DeepEqual(got, want)
	}) {
		t.Fatalf("/debug/config shows policies %v, want %v", got, want)
	}
}

func decodePolicies(t *testing.T, policies string) []*policy.ResiliencePolicy {
	t.Helper()
	pols, err := policy.Decode("policies.yaml", []byte(policies))
	if err != nil {
		t.Fatal(err)
	}
	return pols
}

// asShown is how /debug/config shows pols (its Policies, sorted, the
// default last), as decoded JSON without the sources.
func asShown(t *testing.T, pols []*policy.ResiliencePolicy) []map[string]any {
	t.Helper()
	b, err := json.Marshal(policy.NewTable(pols, "").Policies())
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return withoutSource(out)
}

func withoutSource(pols []map[string]any) []map[string]any {
	for _, p := range pols {
		delete(p, "source")
	}
	return pols
}

// policyFor names the policy geo is under in policies for a sidecar of
// namespace ns.
func policyFor(t *testing.T, policies, ns string) string {
	t.Helper()
	return policy.NewTable(decodePolicies(t, policies), ns).Lookup(geo).Metadata.Name
}

package outbound

import (
	"strconv"
	"testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestBreakerCapKeptOnReload: past maxServices destinations share one
// service without a breaker, and a reload keeps them there: rebuilt while
// the new map filled, they took breakers of their own, more at each
// reload (4,096 → 6,770 → 8,626 → 9,844 for 12,288 hosts).
func TestBreakerCapKeptOnReload(t *testing.T) {
	table := policy.NewTable(nil, "default")
	d := newDestinations("default", table, telemetry.New(0), func(string, ...any) {})
	for i := range maxServices + 1000 {
		d.get("host-" + strconv.Itoa(i) + ".example:80")
	}
	breakers := func() int {
		n := 0
		for _, e := range d.authorities() {
			if e.dst.breaker != nil {
				n++
			}
		}
		return n
	}
	if got := breakers(); got != maxServices {
		t.Fatalf("%d destinations with a breaker, want the cap %d", got, maxServices)
	}
	for reload := range 3 {
		d.setTable(table)
		if got := breakers(); got != maxServices {
			t.Fatalf("after reload %d: %d destinations with a breaker, want the cap %d", reload+1, got, maxServices)
		}
	}
	if o := d.get("host-" + strconv.Itoa(maxServices+500) + ".example:80"); o.name != overflowName || o.breaker != nil {
		t.Errorf("a destination past the cap is %q with breaker %v after the reloads", o.name, o.breaker != nil)
	}
}

// TestSpellingsShareOneEjectionPolicy: two spellings of one Service with
// policies of their own share its balancer, whose ejection settings come
// from the short name's policy whichever spelling was built last: they
// flipped at random between identical reloads (22 of 50 one way).
func TestSpellingsShareOneEjectionPolicy(t *testing.T) {
	pols, err := policy.Decode("p.yaml", []byte(`apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: short}
spec:
  service: auth-service
  outlierDetection: {consecutiveFailures: 3}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: long}
spec:
  service: auth-service.default.svc.cluster.local
  outlierDetection: {consecutiveFailures: 9}
`))
	if err != nil {
		t.Fatal(err)
	}
	table := policy.NewTable(pols, "default")
	d := newDestinations("default", table, telemetry.New(0), func(string, ...any) {})
	short, long := d.get("auth-service:80"), d.get("auth-service.default.svc.cluster.local:80")
	if short.lb == nil || short.lb != long.lb {
		t.Fatal("the two spellings do not share the Service's balancer")
	}
	for reload := range 50 {
		if got := d.get("auth-service.default.svc.cluster.local:80").lb.Config().ConsecutiveFailures; got != 3 {
			t.Fatalf("reload %d: the balancer ejects after %d failures, want the short name's 3", reload, got)
		}
		d.setTable(table)
	}
}

// TestResetSpellings: a breaker is reset by any spelling an app's
// requests share it under, not only the name /debug/breakers shows; a
// spelling of another breaker resets nothing.
func TestResetSpellings(t *testing.T) {
	table := policy.NewTable(nil, "shop")
	d := newDestinations("shop", table, telemetry.New(0), func(string, ...any) {})
	for _, a := range []string{"geo-service:8000", "cart:80", "api.example.com:443"} {
		d.get(a)
	}
	for _, tc := range []struct{ spelling, want string }{
		{"geo-service:8000", "geo-service:8000"},
		{"GEO-SERVICE:8000", "geo-service:8000"},
		{"geo-service.shop:8000", "geo-service:8000"},
		{"geo-service.shop.svc.cluster.local.:8000", "geo-service:8000"},
		{"cart", "cart:80"},
		{"cart.shop.svc", "cart:80"},
		{"API.example.com.:443", "api.example.com:443"},
		{"geo-service", ""},            // :80, not :8000
		{"geo-service.other:8000", ""}, // another namespace's Service
		{"api.example.com", ""},
	} {
		var before *destination
		if tc.want != "" {
			before = d.get(tc.want)
		}
		name, ok := d.reset(tc.spelling)
		if name != tc.want || ok != (tc.want != "") {
			t.Errorf("reset(%q) = %q, %v; want %q", tc.spelling, name, ok, tc.want)
			continue
		}
		if ok && d.get(tc.want) == before {
			t.Errorf("reset(%q): %s kept its breaker", tc.spelling, tc.want)
		}
	}
}

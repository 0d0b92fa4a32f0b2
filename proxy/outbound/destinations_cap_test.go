package outbound

import (
	"strconv"
	"sync"
	"testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// BenchmarkDestinationsAdd: the cost of one new authority while a
// crawler-like app fills the sidecar's authorities to their bound
// (4*maxServices), the policy look-up and the service included. Before
// the recent map, each copied the whole map under mu: about 1.5 ms each
// near the bound.
func BenchmarkDestinationsAdd(b *testing.B) {
	hosts := make([]string, 4*maxServices)
	for i := range hosts {
		hosts[i] = "host-" + strconv.Itoa(i) + ".example:80"
	}
	table := policy.NewTable(nil, "default")
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		d := newDestinations("default", table, telemetry.New(0), func(string, ...any) {})
		for _, h := range hosts {
			d.get(h)
		}
		n += len(hosts)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/authority")
}

// capPolicies: a default, and two services' own policies that a
// crawler-like app might call only once it has called 4,096 other hosts.
const capPolicies = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: default}
spec: {service: "*", timeout: 300ms}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: crawl}
spec: {service: crawl-target, timeout: 100ms, retries: {attempts: 3, retryOn: ["503"]}}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: payments}
spec: {service: payments-service, timeout: 30s, retries: {attempts: 0}}
`

// fillToCap gives maxServices hosts under "*" their breakers, so that
// the next destination is past the cap.
func fillToCap(d *destinations) {
	for i := range maxServices {
		d.get("host-" + strconv.Itoa(i) + ".example:80")
	}
}

// TestOverflowKeepsItsPolicy: past the cap a destination has no breaker
// but keeps its own policy. All of them shared one service with the
// policy of the first to overflow (a payments call got a crawler's 100 ms
// timeout and its retries), and a reload gave them whichever policy map
// order met first.
func TestOverflowKeepsItsPolicy(t *testing.T) {
	pols, err := policy.Decode("p.yaml", []byte(capPolicies))
	if err != nil {
		t.Fatal(err)
	}
	table := policy.NewTable(pols, "default")
	d := newDestinations("default", table, telemetry.New(0), func(string, ...any) {})
	fillToCap(d)
	cases := []struct {
		authority, policy string
	}{
		{"crawl-target:80", "crawl"}, // the first past the cap
		{"payments-service:80", "payments"},
		{"payments-service.default.svc.cluster.local:80", "payments"},
		{"elsewhere.example:443", "default"},
		{"crawl-target:8080", "crawl"},
		{"another.example:80", "default"},
	}
	check := func(when string) {
		t.Helper()
		budgets := map[string]any{}
		for _, tc := range cases {
			dst := d.get(tc.authority)
			if dst.policy.Metadata.Name != tc.policy {
				t.Errorf("%s: %s is served with policy %q, want %q", when, tc.authority, policyName(dst.policy), tc.policy)
			}
			if dst.name != overflowName || dst.breaker != nil {
				t.Errorf("%s: %s past the cap is %q with a breaker %v", when, tc.authority, dst.name, dst.breaker != nil)
			}
			if r := dst.policy.Spec.Retries; (r != nil && r.Attempts > 0) != (dst.budget != nil) {
				t.Errorf("%s: %s has a retry budget %v for retries %+v", when, tc.authority, dst.budget != nil, r)
			}
			// One budget per policy past the cap: retries stay bounded
			// however many hosts an app calls.
			if b, ok := budgets[tc.policy]; ok && b != any(dst.budget) {
				t.Errorf("%s: %s has a retry budget of its own; the policy's destinations past the cap share one", when, tc.authority)
			}
			budgets[tc.policy] = dst.budget
		}
	}
	check("first calls")
	for reload := range 5 {
		d.setTable(table)
		check("reload " + strconv.Itoa(reload+1))
	}
}

// TestOverflowNotTheFirstOnesPolicy: a payments call past the cap was
// served with the policy of the crawler's host, the first past it.
func TestOverflowNotTheFirstOnesPolicy(t *testing.T) {
	pols, err := policy.Decode("p.yaml", []byte(capPolicies))
	if err != nil {
		t.Fatal(err)
	}
	d := newDestinations("default", policy.NewTable(pols, "default"), telemetry.New(0), func(string, ...any) {})
	fillToCap(d)
	d.get("crawl-target:80") // first past the cap
	if p := d.get("payments-service:80"); p.policy.Metadata.Name != "payments" {
		t.Errorf("served with policy %q", policyName(p.policy))
	}
}

// TestOverflowServiceKeepsBalancer: a Service past the cap whose
// endpoints the control plane sent keeps its balancer (EDS balancing and
// ejection); a host that is no Service with endpoints gets none, so that
// a crawler's hosts make no balancers. A Service whose endpoints came
// after its first call past the cap gets its balancer at the next reload.
func TestOverflowServiceKeepsBalancer(t *testing.T) {
	pols, err := policy.Decode("p.yaml", []byte(capPolicies))
	if err != nil {
		t.Fatal(err)
	}
	table := policy.NewTable(pols, "default")
	d := newDestinations("default", table, telemetry.New(0), func(string, ...any) {})
	eps := map[string][]balancer.Target{
		"payments-service.default.svc.cluster.local:80": {{Addr: "10.0.0.1:8080"}},
		"geo.default.svc.cluster.local:80":              {{Addr: "10.0.0.2:8080"}},
	}
	d.eps.set(eps)
	fillToCap(d)
	late := d.get("late-service:80")
	if late.lb != nil {
		t.Fatal("late-service has a balancer before any endpoint of it")
	}
	cases := []struct {
		authority string
		addr      string // "" for no balancer
		policy    string
	}{
		{"payments-service:80", "10.0.0.1:8080", "payments"},
		{"payments-service.default:80", "10.0.0.1:8080", "payments"},
		{"geo:80", "10.0.0.2:8080", "default"},
		{"geo.default.svc.cluster.local:80", "10.0.0.2:8080", "default"},
		{"crawl-target:80", "", "crawl"},
		{"host-99999.example:80", "", "default"},
	}
	check := func(when string) {
		t.Helper()
		for _, tc := range cases {
			dst := d.get(tc.authority)
			if dst.breaker != nil || dst.policy.Metadata.Name != tc.policy {
				t.Errorf("%s: %s has a breaker %v and policy %q, want none and %q", when, tc.authority, dst.breaker != nil, policyName(dst.policy), tc.policy)
			}
			switch {
			case tc.addr == "" && dst.lb != nil:
				t.Errorf("%s: %s has a balancer", when, tc.authority)
			case tc.addr != "" && dst.lb == nil:
				t.Errorf("%s: %s lost its Service's balancer past the cap", when, tc.authority)
			case tc.addr != "":
				if ep := dst.lb.Pick(); ep == nil || ep.Addr() != tc.addr {
					t.Errorf("%s: %s balances to %v, want %s", when, tc.authority, ep, tc.addr)
				}
			}
		}
	}
	check("first calls")
	eps["late-service.default.svc.cluster.local:80"] = []balancer.Target{{Addr: "10.0.0.3:8080"}}
	d.eps.set(eps)
	d.setTable(table)
	check("after a reload")
	if lb := d.get("late-service:80").lb; lb == nil || lb.Pick() == nil {
		t.Error("late-service has no balancer after its endpoints and a reload")
	}
}

// TestAddingAuthoritiesAmortised: a new authority costs a bounded number
// of entries copied into the published map, however many are known (it
// copied them all: 1.5 ms each near the 16,384 kept), and one added is
// published, read without a lock, after a bounded number of slow calls.
func TestAddingAuthoritiesAmortised(t *testing.T) {
	const n = maxServices
	d := newDestinations("default", policy.NewTable(nil, "default"), telemetry.New(0), func(string, ...any) {})
	first := make(map[string]*destination, n)
	copied := 0
	for i := range n {
		a := "host-" + strconv.Itoa(i) + ".example:80"
		before := d.byAuthority.Load()
		first[a] = d.get(a)
		if after := d.byAuthority.Load(); after != before {
			copied += len(*after)
		}
	}
	if copied > 32*n {
		t.Errorf("adding %d authorities copied %d entries, %.0f each; want at most 32 each", n, copied, float64(copied)/n)
	}
	for a, dst := range first {
		if got := d.get(a); got != dst {
			t.Fatalf("%s is %p, first %p", a, got, dst)
		}
	}
	last := "host-" + strconv.Itoa(n-1) + ".example:80"
	for calls := 0; ; calls++ {
		if e, ok := (*d.byAuthority.Load())[last]; ok {
			if e.dst != first[last] {
				t.Fatalf("%s published as %p, first %p", last, e.dst, first[last])
			}
			break
		}
		if calls > n/publishDivisor+1 {
			t.Fatalf("%s not published after %d calls", last, calls)
		}
		d.get(last)
	}
	if got, want := len(d.authorities()), n; got != want {
		t.Errorf("%d authorities known, want %d", got, want)
	}
}

// TestConcurrentAdds: authorities added from several goroutines while
// others read them each keep one destination (run with -race).
func TestConcurrentAdds(t *testing.T) {
	d := newDestinations("default", policy.NewTable(nil, "default"), telemetry.New(0), func(string, ...any) {})
	const workers, each = 4, 500
	got := make([]map[string]*destination, workers)
	var wg sync.WaitGroup
	for w := range workers {
		got[w] = map[string]*destination{}
		wg.Go(func() {
			for i := range each {
				// Every worker calls every authority, in its own order.
				a := "h-" + strconv.Itoa((i*(w+1))%each) + ".example:80"
				dst := d.get(a)
				if prev, ok := got[w][a]; ok && prev != dst {
					t.Errorf("%s changed destination", a)
				}
				got[w][a] = dst
			}
		})
	}
	wg.Wait()
	for a, dst := range got[0] {
		for w := 1; w < workers; w++ {
			if o, ok := got[w][a]; ok && o != dst {
				t.Errorf("%s: two destinations", a)
			}
		}
	}
}

package outbound

import (
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/breaker"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/retry"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// geoTable is a table of one policy for geo, spec the lines under its
// spec: beside service, indented by two spaces.
func geoTable(t *testing.T, spec string) *policy.Table {
	t.Helper()
	pols, err := policy.Decode("geo.yaml", []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\nspec:\n  service: geo\n"+spec))
	if err != nil {
		t.Fatal(err)
	}
	return policy.NewTable(pols, "default")
}

// spend withdraws every retry b allows now.
func spend(t *testing.T, b *retry.Budget) {
	t.Helper()
	for range 10_000 {
		if !b.Withdraw() {
			return
		}
	}
	t.Fatal("the retry budget never ran out")
}

// TestReloadCutsEjections: a reload that turns ejection off lets the
// ejected pods back at once, and one that shortens maxEjectionTime
// shortens the ejections in force to it. Both kept their 300 s: the
// balancer only stored the new settings.
func TestReloadCutsEjections(t *testing.T) {
	const before = "  outlierDetection: {consecutiveFailures: 1, baseEjectionTime: 300s, maxEjectionTime: 300s}\n"
	for _, tc := range []struct {
		name  string
		after string
		left  time.Duration // the ejection's time left after the reload; 0: none
	}{
		{"ejection off", "  outlierDetection: {consecutiveFailures: 0}\n", 0},
		{"shorter", "  outlierDetection: {consecutiveFailures: 1, baseEjectionTime: 1s, maxEjectionTime: 1s}\n", time.Second},
		{"unchanged", before, 290 * time.Second},
		{"breaker only", before + "  circuitBreaker: {openTimeout: 31s}\n", 290 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				d := newDestinations("default", geoTable(t, before), telemetry.New(0), func(string, ...any) {})
				d.eps.set(map[string][]balancer.Target{
					"geo.default.svc.cluster.local:80": {{Addr: "10.0.0.1:80"}, {Addr: "10.0.0.2:80"}, {Addr: "10.0.0.3:80"}},
				})
				lb := d.get("geo:80").lb
				ep := lb.Pick()
				if ejected, _ := ep.Done(ep.Start(), true); !ejected {
					t.Fatal("one failed try did not eject its endpoint")
				}
				time.Sleep(10 * time.Second)
				d.setTable(geoTable(t, tc.after))
				if got := d.get("geo:80").lb; got != lb {
					t.Fatal("the reload gave geo another balancer")
				}
				for _, st := range lb.Status() {
					var left time.Duration
					if st.EjectedUntil != nil {
						left = time.Until(*st.EjectedUntil)
					}
					want := time.Duration(0)
					if st.Addr == ep.Addr() {
						want = tc.left
					}
					if left != want {
						t.Errorf("%s ejected for %v more after the reload, want %v", st.Addr, left, want)
					}
				}
			})
		})
	}
}

// TestReloadKeepsRetryBudget: a destination keeps its retry budget, the
// retries it spent included, across a reload that leaves the budget's
// settings as they were. A change of the breaker's settings alone gave it
// a new budget, and each such reload during a retry storm released
// another minPerSecond × 10 retries.
func TestReloadKeepsRetryBudget(t *testing.T) {
	const retries = "  retries: {attempts: 2, retryOn: [\"503\"], budget: {ratio: 0.2, minPerSecond: 10}}\n"
	const before = retries + "  circuitBreaker: {openTimeout: 30s}\n"
	for _, tc := range []struct {
		name    string
		after   string
		kept    bool // the budget spent before stays spent
		breaker bool // the breaker is the one before
	}{
		{"identical", before, true, true},
		{"breaker changed", retries + "  circuitBreaker: {openTimeout: 31s}\n", true, false},
		{"timeout changed", before + "  timeout: 2s\n", true, true},
		{"budget changed", strings.Replace(before, "minPerSecond: 10", "minPerSecond: 11", 1), false, true},
		{"both changed", strings.Replace(retries, "minPerSecond: 10", "minPerSecond: 11", 1) + "  circuitBreaker: {openTimeout: 31s}\n", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				d := newDestinations("default", geoTable(t, before), telemetry.New(0), func(string, ...any) {})
				old := d.get("geo:80")
				spend(t, old.budget)
				d.setTable(geoTable(t, tc.after))
				now := d.get("geo:80")
				if (now.breaker == old.breaker) != tc.breaker {
					t.Errorf("breaker kept %v, want %v", now.breaker == old.breaker, tc.breaker)
				}
				if now.budget == nil {
					t.Fatal("no retry budget after the reload")
				}
				if spent := !now.budget.Withdraw(); spent != tc.kept {
					t.Errorf("budget spent after the reload: %v, want %v", spent, tc.kept)
				}
			})
		})
	}
}

// TestReloadKeepsOverflowBudget: the destinations past the cap keep their
// policy's shared retry budget across a reload that leaves its settings
// as they were. Every reload, an identical one too, made a new one.
func TestReloadKeepsOverflowBudget(t *testing.T) {
	table := func(crawl string) *policy.Table {
		t.Helper()
		pols, err := policy.Decode("p.yaml", []byte(strings.Replace(capPolicies,
			`spec: {service: crawl-target, timeout: 100ms, retries: {attempts: 3, retryOn: ["503"]}}`, crawl, 1)))
		if err != nil {
			t.Fatal(err)
		}
		return policy.NewTable(pols, "default")
	}
	const crawl = `spec: {service: crawl-target, timeout: 100ms, retries: {attempts: 3, retryOn: ["503"]}}`
	for _, tc := range []struct {
		name  string
		after string
		kept  bool
	}{
		{"identical", crawl, true},
		{"timeout changed", `spec: {service: crawl-target, timeout: 200ms, retries: {attempts: 3, retryOn: ["503"]}}`, true},
		{"budget changed", `spec: {service: crawl-target, timeout: 100ms, retries: {attempts: 3, retryOn: ["503"], budget: {minPerSecond: 20}}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				d := newDestinations("default", table(crawl), telemetry.New(0), func(string, ...any) {})
				fillToCap(d)
				old := d.get("crawl-target:80")
				if old.name != overflowName || old.budget == nil {
					t.Fatalf("crawl-target is %q with budget %v, want past the cap with one", old.name, old.budget != nil)
				}
				spend(t, old.budget)
				d.setTable(table(tc.after))
				for _, a := range []string{"crawl-target:80", "crawl-target:8080"} {
					now := d.get(a)
					if now.name != overflowName || now.budget == nil {
						t.Fatalf("%s after the reload is %q with budget %v", a, now.name, now.budget != nil)
					}
					if spent := !now.budget.Withdraw(); spent != tc.kept {
						t.Errorf("%s: budget spent after the reload: %v, want %v", a, spent, tc.kept)
					}
				}
			})
		})
	}
}

// TestReloadCountsBreakerClosed: a reload that drops a breaker that is
// not closed counts its move to closed, as POST /debug/breakers/reset
// does. The transitions counter showed closed → open and nothing after.
func TestReloadCountsBreakerClosed(t *testing.T) {
	const before = "  circuitBreaker: {consecutiveFailures: 1, openTimeout: 30s}\n"
	for _, tc := range []struct {
		name   string
		wait   time.Duration // after the breaker opened, before the reload
		after  *policy.Table // nil: geoTable(after)
		spec   string
		from   string // the transition to closed counted; "" for none
		closed bool   // geo's breaker after the reload is closed
	}{
		{name: "identical", spec: before},
		{name: "settings changed", spec: "  circuitBreaker: {consecutiveFailures: 1, openTimeout: 31s}\n", from: "open", closed: true},
		{name: "settings changed, half-open", wait: 31 * time.Second, spec: "  circuitBreaker: {consecutiveFailures: 2, openTimeout: 30s}\n", from: "half-open", closed: true},
		{name: "policy removed", after: policy.NewTable(nil, "default"), from: "open", closed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				m := telemetry.New(0)
				d := newDestinations("default", geoTable(t, before), m, func(string, ...any) {})
				done, err := d.get("geo:80").breaker.Allow()
				if err != nil {
					t.Fatal(err)
				}
				done(breaker.ErrFailed)
				time.Sleep(tc.wait)
				after := tc.after
				if after == nil {
					after = geoTable(t, tc.spec)
				}
				d.setTable(after)
				if closed := d.get("geo:80").breaker.State() == breaker.Closed; closed != tc.closed {
					t.Errorf("breaker closed after the reload: %v, want %v", closed, tc.closed)
				}
				ms, err := proxytest.ParseMetrics(string(m.Registry.AppendText(nil)))
				if err != nil {
					t.Fatal(err)
				}
				for _, from := range []string{"open", "half-open"} {
					want := 0.0
					if from == tc.from {
						want = 1
					}
					if got, _ := ms.Value("minimesh_circuit_breaker_transitions_total", "destination", "geo:80", "from", from, "to", "closed"); got != want {
						t.Errorf("transitions from %s to closed = %v, want %v", from, got, want)
					}
				}
				if got, _ := ms.Value("minimesh_circuit_breaker_transitions_total", "destination", "geo:80", "from", "closed", "to", "open"); got != 1 {
					t.Errorf("transitions from closed to open = %v, want 1", got)
				}
			})
		})
	}
}

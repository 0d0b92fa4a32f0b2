package outbound

import (
	"testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/breaker"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestReloadBreakerSuccession: which breaker a destination has after a
// reload. A renamed or respelled policy keeps the breaker of the service
// it governs (TestBreakerKeptAcrossReload sees it from the app); two
// policies in force never share a breaker, even where the previous
// table had one policy for what the new one splits in two.
func TestReloadBreakerSuccession(t *testing.T) {
	const ns = "shop"
	doc := func(name, service, failures string) string {
		return "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: " + name +
			"}\nspec:\n  service: " + service + "\n  circuitBreaker: {consecutiveFailures: " + failures + "}\n---\n"
	}
	const (
		short = "auth:80"
		long  = "auth.shop.svc.cluster.local:80"
		cart  = "cart:80"
	)
	for _, tc := range []struct {
		name        string
		before      string
		after       string
		kept, fresh []string // authorities whose breaker is the one before, a new one
	}{
		{"rename", doc("auth", "auth", "3"), doc("auth-v2", "auth", "3"), []string{short, long}, nil},
		{"respell", doc("auth", "auth", "3"), doc("auth", "auth.shop.svc", "3"), []string{short, long}, nil},
		{"settings changed", doc("auth", "auth", "3"), doc("auth", "auth", "4"), nil, []string{short, long}},
		// One policy becomes two: the spelling that keeps its policy keeps
		// the breaker, the other spelling's new policy starts its own.
		{"split", doc("auth", "auth", "3"), doc("auth", "auth", "3") + doc("long", "auth.shop.svc.cluster.local", "3"),
			[]string{short}, []string{long}},
		// Two become one: the survivor keeps its breaker, for both.
		{"merge", doc("auth", "auth", "3") + doc("long", "auth.shop.svc.cluster.local", "3"), doc("auth", "auth", "3"),
			[]string{short}, nil},
		// Two become one of a third spelling: which breaker is its own is
		// a guess, so neither.
		{"merge respelled", doc("auth", "auth", "3") + doc("long", "auth.shop.svc.cluster.local", "3"), doc("mid", "auth.shop", "3"),
			nil, []string{short, long}},
		// From "*" to a policy of its own with the same settings: the
		// destination's settings did not change; cart, still under "*",
		// keeps a breaker of its own.
		{"own policy added", doc("all", `"*"`, "3"), doc("all", `"*"`, "3") + doc("auth", "auth", "3"),
			[]string{short, long, cart}, nil},
		{"own policy removed", doc("all", `"*"`, "3") + doc("auth", "auth", "3"), doc("all", `"*"`, "3"),
			[]string{short, long, cart}, nil},
		{"own policy removed, other settings", doc("all", `"*"`, "4") + doc("auth", "auth", "3"), doc("all", `"*"`, "4"),
			[]string{cart}, []string{short, long}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDestinations(ns, successionTable(t, tc.before, ns), telemetry.New(0), func(string, ...any) {})
			before := map[string]*breaker.Breaker{}
			for _, a := range []string{short, long, cart} {
				before[a] = d.get(a).breaker
			}
			d.setTable(successionTable(t, tc.after, ns))
			for _, a := range tc.kept {
				if d.get(a).breaker != before[a] {
					t.Errorf("%s has a new breaker, want the one before", a)
				}
			}
			for _, a := range tc.fresh {
				for b, old := range before {
					if d.get(a).breaker == old {
						t.Errorf("%s has the breaker %s had before, want a new one", a, b)
					}
				}
			}
			assertOneBreakerAPolicy(t, d)
			d.setTable(successionTable(t, tc.after, ns))
			assertOneBreakerAPolicy(t, d)
		})
	}
}

func successionTable(t *testing.T, docs, ns string) *policy.Table {
	t.Helper()
	pols, err := policy.Decode("p.yaml", []byte(docs))
	if err != nil {
		t.Fatal(err)
	}
	return policy.NewTable(pols, ns)
}

// assertOneBreakerAPolicy: every authority's breaker is its destination's
// under the policy the table gives it, and no two policies or
// destinations share one.
func assertOneBreakerAPolicy(t *testing.T, d *destinations) {
	t.Helper()
	owner := map[*breaker.Breaker]string{}
	for a, e := range d.authorities() {
		pol := d.table.Lookup(a)
		if e.dst.policy != pol {
			t.Errorf("%s is under policy %s, want %s", a, policyName(e.dst.policy), policyName(pol))
		}
		who := canonical(a, d.namespace) + " under " + pol.Spec.Service
		if o, ok := owner[e.dst.breaker]; ok && o != who {
			t.Errorf("one breaker for %s and %s", o, who)
		}
		owner[e.dst.breaker] = who
	}
}

package xds

import (
	"context"
	"fmt"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// manyNamespaces is a server with policies set and n namespaces
// connected, none with policies of its own.
func manyNamespaces(tb testing.TB, n int, global []*policy.ResiliencePolicy) *Server {
	tb.Helper()
	s := NewServer(context.Background(), nil)
	if err := s.Set(global, nil); err != nil {
		tb.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range n {
		if err := s.join(fmt.Sprintf("ns-%d", i)); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}

// BenchmarkEndpointChange is the cost of an endpoints change (a rollout
// makes one every 100 ms) with 1,000 namespaces connected: EDS and the
// snapshots are made again, the policies are not translated again, even
// when a cluster-wide short name makes each namespace's content its own.
func BenchmarkEndpointChange(b *testing.B) {
	for _, bc := range []struct{ name, geo string }{{"qualified", "geo.mesh"}, {"short name", "geo"}} {
		b.Run(bc.name, func(b *testing.B) {
			global := append(pol(b, "mesh", `{service: `+bc.geo+`, circuitBreaker: {consecutiveFailures: 7}}`),
				pol(b, "mesh", `{service: "*", circuitBreaker: {consecutiveFailures: 9}}`)...)
			s := manyNamespaces(b, 1000, global)
			sets := []map[string][]xdsclient.Endpoint{endpointsOf("10.0.0.1:80"), endpointsOf("10.0.0.2:80")}
			i := 0
			for b.Loop() {
				if _, err := s.SetEndpoints(sets[i%2]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// clusterFailures is the consecutiveFailures of the policy for service
// that namespace ns's snapshot serves (-1: none).
func clusterFailures(t *testing.T, s *Server, ns, service string) int {
	t.Helper()
	snap := mustSnap(t, s, ns)
	for _, r := range snap.GetResources(resource.ClusterType) {
		b, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		p, err := xdsclient.FromCluster(b)
		if err != nil {
			t.Fatal(err)
		}
		if p.Spec.Service == service {
			return p.Spec.CircuitBreaker.ConsecutiveFailures
		}
	}
	return -1
}

// TestPolicyChangeAfterEndpointChanges: the contents kept between
// endpoint changes are made again when the policies change, for
// namespaces that share the cluster-wide content and for those with
// their own, and a namespace that joins later gets the current ones.
func TestPolicyChangeAfterEndpointChanges(t *testing.T) {
	for _, geo := range []string{"geo", "geo.mesh"} {
		t.Run(geo, func(t *testing.T) {
			global := func(n int) []*policy.ResiliencePolicy {
				return pol(t, "mesh", fmt.Sprintf(`{service: %s, circuitBreaker: {consecutiveFailures: %d}}`, geo, n))
			}
			s := manyNamespaces(t, 3, global(7))
			for i := range 3 {
				if _, err := s.SetEndpoints(endpointsOf(fmt.Sprintf("10.0.0.%d:80", i+1))); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Set(global(2), nil); err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				if got := clusterFailures(t, s, fmt.Sprintf("ns-%d", i), geo); got != 2 {
					t.Errorf("ns-%d after a cluster-wide change: consecutiveFailures %d, want 2", i, got)
				}
			}
			if err := s.SetNamespace("ns-1", pol(t, "ns-1", `{service: `+geo+`, circuitBreaker: {consecutiveFailures: 4}}`)); err != nil {
				t.Fatal(err)
			}
			if _, err := s.SetEndpoints(endpointsOf("10.0.0.9:80")); err != nil {
				t.Fatal(err)
			}
			if err := s.SetNamespace("ns-1", nil); err != nil {
				t.Fatal(err)
			}
			if _, err := s.SetEndpoints(endpointsOf("10.0.0.8:80")); err != nil {
				t.Fatal(err)
			}
			if got := clusterFailures(t, s, "ns-1", geo); got != 2 {
				t.Errorf("ns-1 after its own policy went: consecutiveFailures %d, want 2 (the cluster-wide one)", got)
			}
			if err := s.Set(global(5), nil); err != nil {
				t.Fatal(err)
			}
			s.mu.Lock()
			err := s.join("late")
			s.mu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			for _, ns := range []string{"ns-0", "ns-1", "late"} {
				if got := clusterFailures(t, s, ns, geo); got != 5 {
					t.Errorf("%s: consecutiveFailures %d, want 5", ns, got)
				}
				snap := mustSnap(t, s, ns)
				if eps := snap.GetResources(resource.EndpointType); len(eps) != 1 {
					t.Errorf("%s: %d endpoint resources, want 1", ns, len(eps))
				}
			}
		})
	}
}

// TestEndpointChangeKeepsPolicies: an endpoints change costs the same
// whether or not each namespace's policies are translated on their own
// (a cluster-wide short name): the policies are not translated again for
// it. Before, each of 1,000 namespaces was, under the server's lock.
func TestEndpointChangeKeepsPolicies(t *testing.T) {
	allocs := map[string]float64{}
	for _, geo := range []string{"geo.mesh", "geo"} {
		s := manyNamespaces(t, 200, pol(t, "mesh", `{service: `+geo+`, circuitBreaker: {consecutiveFailures: 7}}`))
		sets := []map[string][]xdsclient.Endpoint{endpointsOf("10.0.0.1:80"), endpointsOf("10.0.0.2:80")}
		i := 0
		allocs[geo] = testing.AllocsPerRun(20, func() {
			if _, err := s.SetEndpoints(sets[i%2]); err != nil {
				t.Fatal(err)
			}
			i++
		})
	}
	// With a short name each namespace has a snapshot of its own, made
	// again (measured: 7 allocations a namespace more); translating its
	// policies again was 390 a namespace more.
	if allocs["geo"] > allocs["geo.mesh"]+25*200 {
		t.Errorf("an endpoints change with a short cluster-wide name: %.0f allocations, with a qualified one %.0f: the policies were translated again", allocs["geo"], allocs["geo.mesh"])
	}
	t.Logf("allocations per endpoints change, 200 namespaces: %v", allocs)
}

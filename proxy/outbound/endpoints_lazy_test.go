package outbound

import (
	"fmt"
	"runtime"
	"slices"
	"testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/balancer"
)

// clusterEndpoints is a cluster's endpoints as the control plane sends
// them to every sidecar: services × perService, generation gen's pods.
func clusterEndpoints(services, perService, gen int) map[string][]balancer.Target {
	m := make(map[string][]balancer.Target, services)
	for s := range services {
		ts := make([]balancer.Target, perService)
		for i := range ts {
			ts[i] = balancer.Target{Addr: fmt.Sprintf("10.%d.%d.%d:8080", gen, s, i)}
		}
		m[fmt.Sprintf("svc%d.shop.svc.cluster.local:80", s)] = ts
	}
	return m
}

// TestEndpointsBalancersOnlyForCalledServices: the endpoints of Services
// the app never calls cost no balancer (wildcard EDS sends the whole
// cluster to every sidecar); a Service called later, or before its
// endpoints arrived, balances over the latest ones; /debug/endpoints
// shows both kinds.
func TestEndpointsBalancersOnlyForCalledServices(t *testing.T) {
	pol := policy.BuiltinDefault()
	e := newEndpoints()
	early := e.forService("svc1:80", "shop", pol, nil) // called before any endpoint is known
	if early.Len() != 0 {
		t.Fatalf("no endpoints known yet, balancer has %d", early.Len())
	}
	e.set(clusterEndpoints(200, 100, 1))
	if len(e.slots) != 1 {
		t.Fatalf("%d balancers for 200 Services of which one was called, want 1", len(e.slots))
	}
	if early.Len() != 100 {
		t.Errorf("the called Service's balancer has %d endpoints, want 100", early.Len())
	}
	late := e.forService("svc7.shop:80", "shop", pol, nil)
	if late.Len() != 100 || late.Pick(nil).Addr() == "" {
		t.Fatalf("a Service called after its endpoints arrived: %d endpoints, want 100", late.Len())
	}
	e.set(clusterEndpoints(200, 3, 2))
	if late.Len() != 3 || early.Len() != 3 {
		t.Errorf("after a new set: %d and %d endpoints, want 3", late.Len(), early.Len())
	}
	st := e.statuses()
	if len(st) != 200 || len(st[0].Endpoints) != 3 {
		t.Errorf("/debug/endpoints: %d Services, want 200 with 3 endpoints each", len(st))
	}
	e.set(nil)
	if late.Len() != 0 || len(e.statuses()) != 0 {
		t.Errorf("after an empty set: %d endpoints, %d Services shown", late.Len(), len(e.statuses()))
	}
}

// TestEndpointsHeapBound: what 20,000 endpoints of Services nobody calls
// cost a sidecar beyond the list it was handed (docs/controlplane.md,
// "Costs").
func TestEndpointsHeapBound(t *testing.T) {
	in := clusterEndpoints(200, 100, 1)
	// The heap is the process's: what the goroutines of earlier tests,
	// still ending, take or free between two readings counts too (the
	// bound is 400 KB in all). The middle of three measurements is what
	// the endpoints take.
	var grew []int64
	for range 3 {
		grew = append(grew, heapGrowth(func() any {
			e := newEndpoints()
			e.set(in)
			return e
		}))
	}
	slices.Sort(grew)
	per := grew[1] / 20000
	t.Logf("20,000 endpoints of uncalled Services: %d bytes of heap each beyond the list (heap grew by %v bytes)", per, grew)
	if per > 20 {
		t.Errorf("%d bytes per endpoint of an uncalled Service, want (nearly) none beyond the list handed over", per)
	}
	runtime.KeepAlive(in)
}

// heapGrowth is how much more heap is live once f has run, holding
// what f returned.
func heapGrowth(f func() any) int64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	kept := f()
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(kept)
	return int64(after.HeapAlloc) - int64(before.HeapAlloc)
}

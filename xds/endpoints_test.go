package xds

import (
	"bytes"
	"context"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"

	"github.com/minimesh/minimesh/wellknown"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// epRecorder is a sidecar's ApplyEndpoints: the last set and how many
// were applied.
type epRecorder struct {
	mu      sync.Mutex
	applied int
	last    map[string][]xdsclient.Endpoint
}

func (r *epRecorder) apply(eps map[string][]xdsclient.Endpoint, _ string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied++
	r.last = eps
	return nil
}

func (r *epRecorder) get(name string) ([]xdsclient.Endpoint, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	eps, ok := r.last[name]
	return eps, ok
}

func (r *epRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied
}

func ep(s string, terminating bool) xdsclient.Endpoint {
	return xdsclient.Endpoint{Addr: netip.MustParseAddrPort(s), Terminating: terminating, Zone: "z1"}
}

var geoName = wellknown.EndpointName("geo", "shop", 8000)

func endpointsOf(addrs ...string) map[string][]xdsclient.Endpoint {
	var eps []xdsclient.Endpoint
	for _, a := range addrs {
		eps = append(eps, ep(a, false))
	}
	return map[string][]xdsclient.Endpoint{geoName: eps}
}

func epClient(addr, ns string, r *recorder, er *epRecorder) *xdsclient.Client {
	c := client(addr, ns, r)
	c.ApplyEndpoints = er.apply
	return c
}

// TestServeEndpoints: every sidecar gets every Service's endpoints over
// the same stream as its policies; a change of endpoints reaches them
// without re-sending the policies, and namespaces still share one
// snapshot.
func TestServeEndpoints(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	s.ExpectEndpoints()
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	if err := s.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	var recs []*recorder
	var eps []*epRecorder
	for _, ns := range []string{"shop", "shop", "checkout"} {
		r, er := newRecorder(), &epRecorder{}
		recs, eps = append(recs, r), append(eps, er)
		go epClient(addr, ns, r, er).Run(ctx)
	}
	// Policies are set, endpoints not yet: nobody is answered.
	waitFor(t, "the watches", func() bool { return len(s.Cache.GetStatusKeys()) == 2 })
	time.Sleep(200 * time.Millisecond)
	for i := range recs {
		if recs[i].consecutive("geo") != -1 || eps[i].count() != 0 {
			t.Fatal("a sidecar was answered before the endpoints were set")
		}
	}

	if _, err := s.SetEndpoints(endpointsOf("10.0.0.1:8080", "[fd00::2]:8080")); err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		waitFor(t, "policies and endpoints", func() bool {
			got, _ := eps[i].get(geoName)
			return recs[i].consecutive("geo") == 7 && len(got) == 2
		})
	}
	got, _ := eps[0].get(geoName)
	if want := []xdsclient.Endpoint{ep("10.0.0.1:8080", false), ep("[fd00::2]:8080", false)}; !slices.Equal(got, want) {
		t.Fatalf("endpoints %v, want %v", got, want)
	}
	// Namespaces hold one copy of the endpoints between them (their
	// policies differ: the cluster-wide geo is a Service of each).
	if a, b := mustSnap(t, s, "shop").Resources[types.Endpoint].Items, mustSnap(t, s, "checkout").Resources[types.Endpoint].Items; reflect.ValueOf(a).Pointer() != reflect.ValueOf(b).Pointer() {
		t.Fatal("namespaces do not share the endpoints")
	}

	// A rolling update: one endpoint terminating, a new one ready.
	roll := map[string][]xdsclient.Endpoint{geoName: {ep("10.0.0.1:8080", true), ep("[fd00::2]:8080", false), ep("10.0.0.3:8080", false)}}
	if _, err := s.SetEndpoints(roll); err != nil {
		t.Fatal(err)
	}
	for i := range eps {
		waitFor(t, "the roll", func() bool { got, _ := eps[i].get(geoName); return slices.Equal(got, roll[geoName]) })
	}
	// The same endpoints again push nothing; the policies were sent once.
	v := s.Version("shop")
	if _, err := s.SetEndpoints(roll); err != nil || s.Version("shop") != v {
		t.Fatalf("the same endpoints changed the version (%v)", err)
	}
	time.Sleep(100 * time.Millisecond)
	for i, r := range recs {
		r.mu.Lock()
		n := len(r.versions)
		r.mu.Unlock()
		if n != 1 || eps[i].count() != 2 {
			t.Fatalf("sidecar %d: %d policy applies and %d endpoint applies, want 1 and 2", i, n, eps[i].count())
		}
	}
	// A policy change is pushed without the endpoints.
	if err := s.SetNamespace("shop", shopOwn(t)["shop"]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the policy change", func() bool { return recs[0].consecutive("geo") == 3 })
	time.Sleep(100 * time.Millisecond)
	if eps[0].count() != 2 {
		t.Fatalf("a policy change re-sent the endpoints (%d applies)", eps[0].count())
	}
}

func mustSnap(t *testing.T, s *Server, ns string) *cachev3.Snapshot {
	t.Helper()
	snap, err := s.Cache.GetSnapshot(ns)
	if err != nil {
		t.Fatal(err)
	}
	return snap.(*cachev3.Snapshot)
}

// TestEndpointsNotExpected: a server without a cluster (policies from
// files) answers an EDS request with no endpoints rather than not at all.
func TestEndpointsNotExpected(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	if err := s.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	r, er := newRecorder(), &epRecorder{}
	go epClient(addr, "shop", r, er).Run(ctx)
	waitFor(t, "policies and an empty endpoint set", func() bool { return r.consecutive("geo") == 7 && er.count() == 1 })
	if _, ok := er.get(geoName); ok {
		t.Fatal("endpoints from nowhere")
	}
}

// TestEndpointsStaticStability: the control plane gone, the sidecar
// keeps its endpoints; a restarted one that has read the policies but
// not yet the endpoints does not make it drop them.
func TestEndpointsStaticStability(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	s.ExpectEndpoints()
	if err := s.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetEndpoints(endpointsOf("10.0.0.1:8080")); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	r, er := newRecorder(), &epRecorder{}
	go epClient(addr, "shop", r, er).Run(ctx)
	waitFor(t, "endpoints", func() bool { got, _ := er.get(geoName); return len(got) == 1 })
	stop()

	s2 := NewServer(ctx, nil)
	s2.ExpectEndpoints()
	if err := s2.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	_, stop2 := serve(t, s2, addr)
	defer stop2()
	waitFor(t, "the reconnect", func() bool { return len(s2.Cache.GetStatusKeys()) == 1 })
	time.Sleep(300 * time.Millisecond)
	if got, _ := er.get(geoName); len(got) != 1 || er.count() != 1 {
		t.Fatalf("endpoints %v after %d applies: the restarted server answered before it had endpoints", got, er.count())
	}
	if _, err := s2.SetEndpoints(endpointsOf("10.0.0.1:8080", "10.0.0.2:8080")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new endpoints", func() bool { got, _ := er.get(geoName); return len(got) == 2 })
	if keys := slices.Collect(maps.Keys(er.last)); len(keys) != 1 {
		t.Fatalf("services %v", keys)
	}
}

// TestPremarshaled: the endpoints held encoded once are, on the wire,
// exactly the ClusterLoadAssignment's own encoding, and decode back.
func TestPremarshaled(t *testing.T) {
	eps := []xdsclient.Endpoint{ep("10.0.0.1:8080", false), ep("[fd00::2]:8080", true), {Addr: netip.MustParseAddrPort("10.0.0.3:80"), Zone: "z2"}}
	plain := LoadAssignment(geoName, eps)
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(plain)
	if err != nil {
		t.Fatal(err)
	}
	held, b, err := premarshaled(LoadAssignment(geoName, eps))
	if err != nil {
		t.Fatal(err)
	}
	again, _ := cachev3.MarshalResource(held)
	if !bytes.Equal(b, want) || !bytes.Equal(again, want) || cachev3.GetResourceName(held) != geoName {
		t.Fatalf("premarshaled encoding differs, or the name is lost (%q)", cachev3.GetResourceName(held))
	}
	var back endpointv3.ClusterLoadAssignment
	if err := proto.Unmarshal(again, &back); err != nil {
		t.Fatal(err)
	}
	if got, err := xdsclient.FromLoadAssignment(again); err != nil || !slices.Equal(got, eps) {
		t.Fatalf("decoded %v, %v; want %v", got, err, eps)
	}
}

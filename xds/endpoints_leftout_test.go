package xds

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/wellknown"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// vipsOf gives every Service port of eps a ClusterIP, 10.96.x.y on the
// port of its name, distinct per resource (b: distinct per call).
func vipsOf(eps map[string][]xdsclient.Endpoint, b byte) map[string][]netip.AddrPort {
	out := map[string][]netip.AddrPort{}
	for i, name := range slices.Sorted(maps.Keys(eps)) {
		_, port, _ := strings.Cut(name, ":")
		out[name] = aps(fmt.Sprintf("10.%d.%d.%d:%s", 96+b, i/256%256, i%256, port))
	}
	return out
}

// servedCLAs is what the server serves now, decoded: each resource's
// endpoints and ClusterIPs.
func servedCLAs(t *testing.T, s *Server) map[string]*endpointv3.ClusterLoadAssignment {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]*endpointv3.ClusterLoadAssignment{}
	for name, r := range s.endpoints.resources.Items {
		b, err := cachev3.MarshalResource(r.Resource)
		if err != nil {
			t.Fatal(err)
		}
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := proto.Unmarshal(b, cla); err != nil {
			t.Fatal(err)
		}
		out[name] = cla
	}
	return out
}

func claVIPs(cla *endpointv3.ClusterLoadAssignment) []netip.AddrPort {
	vip := cla.GetNamedEndpoints()[xdsclient.ClusterIPName]
	if vip == nil {
		return nil
	}
	sa := vip.GetAddress().GetSocketAddress()
	out := []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr(sa.GetAddress()), uint16(sa.GetPortValue()))}
	for _, a := range vip.GetAdditionalAddresses() {
		sa := a.GetAddress().GetSocketAddress()
		out = append(out, netip.AddrPortFrom(netip.MustParseAddr(sa.GetAddress()), uint16(sa.GetPortValue())))
	}
	return out
}

func lbEndpoints(cla *endpointv3.ClusterLoadAssignment) int {
	n := 0
	for _, l := range cla.GetEndpoints() {
		n += len(l.GetLbEndpoints())
	}
	return n
}

// manyPorts is one Service (name in ns) with n ports, none with
// endpoints, and their ClusterIPs.
func manyPorts(ns, name string, n int) (map[string][]xdsclient.Endpoint, map[string][]netip.AddrPort) {
	eps, vips := map[string][]xdsclient.Endpoint{}, map[string][]netip.AddrPort{}
	for p := 1; p <= n; p++ {
		r := wellknown.EndpointName(name, ns, p)
		eps[r] = nil
		vips[r] = aps(fmt.Sprintf("10.96.0.20:%d", p), fmt.Sprintf("[fd00:96::20]:%d", p))
	}
	return eps, vips
}

// TestLeftOutKeepsClusterIPs: a Service whose endpoints the bounds
// leave out (over its own, over the cluster's endpoint total, over the
// byte bound) is still served, with its ClusterIPs and no endpoints, as
// a Service kube-proxy routes is: a redirected connection to its
// ClusterIP keeps the Service's name, policy, breaker and metrics, and
// its callers dial the ClusterIP. Only what even that would not fit is
// left out whole (Dropped), and then from the namespace holding the most
// once none of its Services has endpoints left. Before, every resource of
// a Service left out was skipped, its ClusterIPs with it, and a
// connection to 10.96.0.20:5432 was named by the address.
func TestLeftOutKeepsClusterIPs(t *testing.T) {
	pg := wellknown.EndpointName("pg", "shop", 5432)
	var pgEps []xdsclient.Endpoint
	for i := range MaxServiceEndpoints + 1 {
		pgEps = append(pgEps, ep(fmt.Sprintf("10.1.%d.%d:5432", i/256, i%256), false))
	}
	wide, wideVIPs := manyPorts("flood", "wide", 5000) // ~820 KB without an endpoint
	// Over 3 MiB in 14,000 Services of one endpoint each (~230 bytes
	// each, ~95 of them the ClusterIP and name): their endpoints go
	// first, then, still over, some of them whole.
	long := map[string][]xdsclient.Endpoint{}
	for i := range 14000 {
		long[wellknown.EndpointName(fmt.Sprintf("%s-%d", strings.Repeat("l", 50), i), strings.Repeat("f", 40), 80)] =
			[]xdsclient.Endpoint{ep(fmt.Sprintf("10.2.%d.%d:8080", i/256, i%256), false)}
	}
	cases := []struct {
		name string
		eps  map[string][]xdsclient.Endpoint
		vips map[string][]netip.AddrPort // beside vipsOf(eps)
		// out: "ns/name reason dropped" of each left out, when few; else
		// outN, and dropped of them left out whole.
		out           []string
		outN, dropped int
	}{
		{name: "a Service over its endpoint cap", eps: map[string][]xdsclient.Endpoint{pg: pgEps},
			out: []string{"shop/pg service-cap "}},
		{name: "services over the endpoint total", eps: many("flood", "big", 5, 4200, 3),
			out: []string{"flood/big-0 cluster-total "}},
		{name: "over the byte bound: endpoints first, then whole", eps: long, outN: 14000, dropped: 238},
		{name: "a Service whose ports alone pass its byte cap", eps: wide, vips: wideVIPs,
			out: []string{"flood/wide service-cap service-cap"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServer(t.Context(), nil)
			eps := join(tc.eps, endpointsOf("10.0.0.2:8080"))
			vips := vipsOf(eps, 0)
			maps.Copy(vips, tc.vips)
			res, err := s.SetServices(eps, vips)
			if err != nil {
				t.Fatal(err)
			}
			got := servedCLAs(t, s)
			if g := got[geoName]; lbEndpoints(g) != 1 || !slices.Equal(claVIPs(g), vips[geoName]) {
				t.Fatalf("shop's geo served as %v: another Service's excess took it", g)
			}
			leftOut := map[string]LeftOut{}
			var out []string
			dropped := 0
			for _, l := range res.LeftOut {
				leftOut[l.Namespace+"/"+l.Service] = l
				out = append(out, fmt.Sprintf("%s/%s %s %s", l.Namespace, l.Service, l.Reason, l.Dropped))
				if l.Dropped != "" {
					dropped++
				}
			}
			endpoints, bytes := 0, 0
			for name, r := range s.endpoints.resources.Items {
				b, _ := cachev3.MarshalResource(r.Resource)
				bytes += resourceBytes(len(b))
				endpoints += lbEndpoints(got[name])
			}
			for name := range eps {
				ns, svc := serviceOfName(name)
				l, isOut := leftOut[ns+"/"+svc]
				cla, sent := got[name]
				switch {
				case isOut && l.Dropped != "":
					if sent {
						t.Errorf("%s: left out whole (%v) and sent", name, l)
					}
					// Whole only once its namespace has no endpoints
					// served: none of them was taken for a ClusterIP.
					for other, c := range got {
						if o, _ := serviceOfName(other); o == ns && lbEndpoints(c) > 0 {
							t.Fatalf("%s left out whole while %s of its namespace has endpoints", name, other)
						}
					}
				case isOut:
					// Byte for byte what a Service kube-proxy routes is
					// sent (endpointctl.KubeProxyRouted: ClusterIPs, no
					// endpoints): the sidecar treats the two alike.
					if !sent || !proto.Equal(cla, LoadAssignment(name, nil, vips[name]...)) {
						t.Errorf("%s (%v): sent %v as %v, want its ClusterIPs %v and no endpoints", name, l, sent, cla, vips[name])
					}
				case !sent || !slices.Equal(claVIPs(cla), vips[name]) || lbEndpoints(cla) != len(eps[name]):
					t.Errorf("%s: served %v, want its endpoints and ClusterIPs", name, cla)
				}
			}
			if endpoints > xdsclient.MaxEndpoints || bytes > xdsclient.MaxEndpointBytes {
				t.Errorf("served %d endpoints in %d bytes: over what a sidecar takes", endpoints, bytes)
			}
			if res.Endpoints != endpoints || res.Bytes != bytes || res.ServicePorts != len(got) {
				t.Errorf("reported %d endpoints, %d bytes, %d ports; served %d, %d, %d", res.Endpoints, res.Bytes, res.ServicePorts, endpoints, bytes, len(got))
			}
			if tc.out != nil && !slices.Equal(out, tc.out) {
				t.Errorf("left out %q\nwant %q", out, tc.out)
			}
			if tc.out == nil && (len(out) != tc.outN || dropped != tc.dropped) {
				t.Errorf("left out %d Services, %d whole; want %d, %d", len(out), dropped, tc.outN, tc.dropped)
			}
			t.Logf("served %d Service ports, %d endpoints, %d bytes; %d Services left out, %d whole", len(got), endpoints, bytes, len(out), dropped)
		})
	}
}

// TestLeftOutNamingStableOverTheWire: a sidecar on the state-of-the-world
// stream, while a roll's surge pod takes the cluster over its endpoint
// total and back, keeps every Service's ClusterIPs: the Service at the
// edge loses and regains its endpoints (its callers dial its ClusterIP
// meanwhile, as for a Service kube-proxy routes), never its name. A
// Service over its own cap is the same from the start. Before, the
// ClusterIP left with the endpoints and a connection to it was named
// pg:5432 one push and 10.96.0.1:5432 the next, splitting its breaker
// and metrics.
func TestLeftOutNamingStableOverTheWire(t *testing.T) {
	s, er, ir := clusterIPSidecar(t)

	pg := wellknown.EndpointName("pg", "shop", 5432)
	var pgEps []xdsclient.Endpoint
	for i := range MaxServiceEndpoints + 1 {
		pgEps = append(pgEps, ep(fmt.Sprintf("10.1.%d.%d:5432", i/256, i%256), false))
	}
	// flood: 5 Services of 3,999 endpoints, big-0 with 3,995 before its
	// roll's surge pods, big-1 with 4,004 during its own: with geo's one
	// (pg's are left out by its cap), 19,992, then 20,001, over the
	// total (big-1, the largest of flood, gives its endpoints), then
	// 19,996.
	set := func(big0, big1 int) map[string][]xdsclient.Endpoint {
		eps := join(many("flood", "big", 5, 3999, 3), endpointsOf("10.0.0.2:8080"))
		eps[pg] = pgEps
		b0, b1 := wellknown.EndpointName("big-0", "flood", 80), wellknown.EndpointName("big-1", "flood", 80)
		eps[b0] = eps[b0][:big0]
		for i := 3999; i < big1; i++ {
			eps[b1] = append(eps[b1], ep(fmt.Sprintf("10.4.0.%d:8080", i-3999), false))
		}
		return eps
	}
	first := set(3995, 3999)
	vips := vipsOf(first, 0)
	want := map[netip.AddrPort]string{}
	for name, as := range vips {
		for _, a := range as {
			want[a] = name
		}
	}
	big1 := wellknown.EndpointName("big-1", "flood", 80)
	for i, step := range []struct {
		big0, big1      int
		pgEps, big1Sent int
		leftOut         []string
	}{
		{big0: 3995, big1: 3999, big1Sent: 3999, leftOut: []string{"shop/pg"}},
		{big0: 3999, big1: 4004, big1Sent: 0, leftOut: []string{"flood/big-1", "shop/pg"}},
		{big0: 3999, big1: 3999, big1Sent: 3999, leftOut: []string{"shop/pg"}},
	} {
		res, err := s.SetServices(set(step.big0, step.big1), vips)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, l := range res.LeftOut {
			out = append(out, l.Namespace+"/"+l.Service)
		}
		if !slices.Equal(out, step.leftOut) {
			t.Fatalf("step %d: left out %v, want %v", i, out, step.leftOut)
		}
		waitFor(t, fmt.Sprintf("step %d's endpoints", i), func() bool {
			got, ok := er.get(big1)
			pgGot, pgOK := er.get(pg)
			applied := er.count()
			ir.mu.Lock()
			ips := ir.n
			ir.mu.Unlock()
			// ips == applied: the ClusterIPs of the response whose
			// endpoints are these (ApplyClusterIPs follows
			// ApplyEndpoints).
			return ok && len(got) == step.big1Sent && pgOK && len(pgGot) == step.pgEps && ips == applied
		})
		if !ir.is(want) {
			ir.mu.Lock()
			t.Fatalf("step %d: the sidecar's ClusterIPs %v, want every Service's %v", i, ir.last, want)
		}
	}
}

// TestDeltaLeftOutKeepsClusterIPs: an Envoy on incremental ADS is sent
// a Service whose endpoints are left out as a changed resource (its
// ClusterIPs, no endpoints), not as a removed one; a Service left out
// whole is removed.
func TestDeltaLeftOutKeepsClusterIPs(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s := NewServer(ctx, nil)
	if err := s.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	pg := wellknown.EndpointName("pg", "shop", 5432)
	pgVIP := aps("10.96.0.20:5432")
	wide, wideVIPs := manyPorts("shop", "wide", 5000)
	few := map[string][]xdsclient.Endpoint{pg: {ep("10.1.0.1:5432", false)}, wellknown.EndpointName("wide", "shop", 1): nil}
	if _, err := s.SetServices(few, map[string][]netip.AddrPort{pg: pgVIP, wellknown.EndpointName("wide", "shop", 1): wideVIPs[wellknown.EndpointName("wide", "shop", 1)]}); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	sctx, end := context.WithTimeout(ctx, 20*time.Second)
	defer end()
	delta, err := discovery.NewAggregatedDiscoveryServiceClient(rawConn(t, addr)).DeltaAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(map[string]any{"namespace": "shop"})
	node := &corev3.Node{Id: "shop/envoy-1", Metadata: md}
	if err := delta.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: endpointType}); err != nil {
		t.Fatal(err)
	}
	resp, err := delta.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 2 {
		t.Fatalf("first delta EDS: %v", resp.GetResources())
	}
	if err := delta.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: endpointType, ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}

	// pg over its cap, wide's ports past its byte cap.
	var pgEps []xdsclient.Endpoint
	for i := range MaxServiceEndpoints + 1 {
		pgEps = append(pgEps, ep(fmt.Sprintf("10.1.%d.%d:5432", i/256, i%256), false))
	}
	eps := join(wide, map[string][]xdsclient.Endpoint{pg: pgEps})
	vips := maps.Clone(wideVIPs)
	vips[pg] = pgVIP
	if _, err := s.SetServices(eps, vips); err != nil {
		t.Fatal(err)
	}
	if resp, err = delta.Recv(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(resp.GetRemovedResources(), []string{wellknown.EndpointName("wide", "shop", 1)}) {
		t.Errorf("removed %v, want wide's one port sent before (left out whole)", resp.GetRemovedResources())
	}
	if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != pg {
		t.Fatalf("delta EDS changed %v, want pg", resp.GetResources())
	}
	var cla endpointv3.ClusterLoadAssignment
	if err := resp.GetResources()[0].GetResource().UnmarshalTo(&cla); err != nil {
		t.Fatal(err)
	}
	if lbEndpoints(&cla) != 0 || !slices.Equal(claVIPs(&cla), pgVIP) {
		t.Errorf("pg sent as %v, want its ClusterIP and no endpoints", &cla)
	}
}

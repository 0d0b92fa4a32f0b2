package xds

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/minimesh/minimesh/internal/grpcwire"
	"github.com/minimesh/minimesh/wellknown"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// many is n Services of per endpoints each in namespace ns, named
// prefix-0, prefix-1...; addresses from 10.<b>.x.y, b distinct per call.
func many(ns, prefix string, n, per int, b byte) map[string][]xdsclient.Endpoint {
	out := map[string][]xdsclient.Endpoint{}
	k := 0
	for i := range n {
		var list []xdsclient.Endpoint
		for range per {
			list = append(list, ep(fmt.Sprintf("10.%d.%d.%d:8080", b, k/256%256, k%256), false))
			k++
		}
		out[wellknown.EndpointName(fmt.Sprintf("%s-%d", prefix, i), ns, 80)] = list
	}
	return out
}

// join is the union of sets.
func join(sets ...map[string][]xdsclient.Endpoint) map[string][]xdsclient.Endpoint {
	out := map[string][]xdsclient.Endpoint{}
	for _, s := range sets {
		for k, v := range s {
			out[k] = v
		}
	}
	return out
}

// served is what the server serves now: the endpoints of each resource
// as a sidecar decodes them, and the size of the EDS response that
// carries them all.
func served(t *testing.T, s *Server) (map[string][]xdsclient.Endpoint, int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]xdsclient.Endpoint{}
	resp := &discovery.DiscoveryResponse{VersionInfo: s.endpoints.version, TypeUrl: endpointType, Nonce: "1234"}
	for name, r := range s.endpoints.resources.Items {
		b, err := cachev3.MarshalResource(r.Resource)
		if err != nil {
			t.Fatal(err)
		}
		resp.Resources = append(resp.Resources, &anypb.Any{TypeUrl: endpointType, Value: b})
		if out[name], err = xdsclient.FromLoadAssignment(b); err != nil {
			t.Fatal(err)
		}
	}
	return out, proto.Size(resp)
}

// TestOneNamespaceCannotFreezeEndpoints: whatever one namespace writes
// (Services with many endpoints, one huge Service, thousands of Services
// without any), the other namespaces' endpoints keep flowing: the excess
// is left out of the set, from the namespace that holds the most, never
// the whole set refused (which kept the last one for every sidecar: a
// rolling Deployment elsewhere left sidecars calling dead pods), and
// never a set a sidecar would refuse.
func TestOneNamespaceCannotFreezeEndpoints(t *testing.T) {
	longName := strings.Repeat("s", 50)
	cases := []struct {
		name  string
		flood map[string][]xdsclient.Endpoint
		// out is what is left out, when it is few Services; else
		// outN Services, all of namespace flood, for the total.
		out  []string
		outN int
	}{
		{name: "services over the total", flood: many("flood", "big", 5, 4200, 1), // 21,000 endpoints
			out: []string{"flood/big-0 4200 cluster-total"}},
		{name: "one Service over its cap", flood: many("flood", "huge", 1, 6000, 1), // under the total
			out: []string{"flood/huge-0 6000 service-cap"}},
		{name: "services without endpoints", flood: many("flood", longName, 40000, 0, 1), outN: 20021}, // ~6.3 MB of names
		{name: "many small services", flood: many("flood", "small", 2100, 10, 1), outN: 101},           // 21,000 in 2,100 Services
		{name: "two namespaces over", flood: join(many("flood", "a", 3, 4000, 1), many("other", "b", 3, 4000, 2)), // 24,000: each gives
			out: []string{"flood/a-0 4000 cluster-total", "other/b-0 4000 cluster-total"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServer(context.Background(), nil)
			if _, err := s.SetEndpoints(endpointsOf("10.0.0.1:8080")); err != nil {
				t.Fatal(err)
			}
			// The flood, and a rolling Deployment in shop: geo's pod
			// replaced.
			res, err := s.SetEndpoints(join(tc.flood, endpointsOf("10.0.0.2:8080")))
			if err != nil {
				t.Fatal(err)
			}
			got, size := served(t, s)
			if w := endpointsOf("10.0.0.2:8080")[geoName]; !slices.Equal(got[geoName], w) {
				t.Fatalf("shop's geo: %v, want its new pod %v: one namespace froze every other's endpoints", got[geoName], w)
			}
			total := 0
			for _, eps := range got {
				total += len(eps)
			}
			// What a sidecar takes: its decoder's bound, and its
			// transport's on one message.
			if total > xdsclient.MaxEndpoints || size > grpcwire.DefaultMaxMessage {
				t.Fatalf("served %d endpoints in %d bytes: a sidecar refuses more than %d, or %d", total, size, xdsclient.MaxEndpoints, grpcwire.DefaultMaxMessage)
			}
			if res.Endpoints != total || res.ServicePorts != len(got) || res.Bytes > size || size-res.Bytes > 200 {
				t.Errorf("reported %d endpoints, %d ports, %d bytes; served %d, %d, %d", res.Endpoints, res.ServicePorts, res.Bytes, total, len(got), size)
			}
			var out []string
			for _, l := range res.LeftOut {
				out = append(out, fmt.Sprintf("%s/%s %d %s", l.Namespace, l.Service, l.Endpoints, l.Reason))
				if l.Namespace == "shop" {
					t.Errorf("left out %v", l)
				}
				// Its endpoints out, its resource (its ClusterIPs) still
				// sent; nothing of it when even that is left out.
				eps, ok := got[wellknown.EndpointName(l.Service, l.Namespace, 80)]
				if len(eps) > 0 || ok != (l.Dropped == "") {
					t.Errorf("%v: served %d endpoints, resource sent %v", l, len(eps), ok)
				}
			}
			if tc.out != nil && !slices.Equal(out, tc.out) {
				t.Errorf("left out %q\nwant %q", out, tc.out)
			}
			if tc.out == nil && len(out) != tc.outN {
				t.Errorf("left out %d Services, want %d", len(out), tc.outN)
			}
			t.Logf("served %d Service ports, %d endpoints, %d bytes; %d Services left out", len(got), total, size, len(out))
		})
	}
}

// TestSidecarTakesEveryPush: the largest sets the server serves, of
// the longest names and addresses there can be, reach a sidecar's xDS
// client over the wire and are applied, not refused: neither by its
// decoder (xdsclient.MaxEndpoints) nor by its transport, whose bound on a
// message (grpcwire.DefaultMaxMessage) a set of Services without
// endpoints passed while counting no endpoint, ending every sidecar's
// stream, its policies' included.
func TestSidecarTakesEveryPush(t *testing.T) {
	ns := strings.Repeat("n", 63)
	label := func(i int) string { return fmt.Sprintf("%s-%d", strings.Repeat("s", 55), i) }
	zone := strings.Repeat("z", 63)
	empty := map[string][]xdsclient.Endpoint{}
	for i := range 40000 {
		empty[wellknown.EndpointName(label(i), ns, 65535)] = nil
	}
	v6 := map[string][]xdsclient.Endpoint{}
	for i := range 5000 {
		var list []xdsclient.Endpoint
		for j := range 5 {
			a := netip.MustParseAddrPort(fmt.Sprintf("[fd00:1111:2222:3333:4444:5555:%x:%x]:65535", i, j))
			list = append(list, xdsclient.Endpoint{Addr: a, Terminating: j%2 == 0, Zone: zone})
		}
		v6[wellknown.EndpointName(label(i), ns, 65535)] = list
	}
	for _, tc := range []struct {
		name string
		set  map[string][]xdsclient.Endpoint
	}{{"40,000 Services without endpoints", empty}, {"25,000 IPv6 endpoints in long names", v6}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			s := NewServer(ctx, nil)
			s.ExpectEndpoints()
			if err := s.Set(meshWide(t), nil); err != nil {
				t.Fatal(err)
			}
			addr, stop := serve(t, s, "127.0.0.1:0")
			defer stop()
			res, err := s.SetEndpoints(join(tc.set, endpointsOf("10.0.0.2:8080")))
			if err != nil {
				t.Fatal(err)
			}
			r, er := newRecorder(), &epRecorder{}
			go epClient(addr, "shop", r, er).Run(ctx)
			waitFor(t, "the set applied", func() bool { _, ok := er.get(geoName); return ok })
			er.mu.Lock()
			n := len(er.last)
			er.mu.Unlock()
			if n != res.ServicePorts {
				t.Fatalf("the sidecar holds %d Service ports, want the %d served", n, res.ServicePorts)
			}
			t.Logf("applied %d Service ports, %d endpoints, %d bytes; %d Services left out", n, res.Endpoints, res.Bytes, len(res.LeftOut))
		})
	}
}

// BenchmarkEndpointResources is a publish's encoding and bound: 20,000
// endpoints in 200 Services (at the bound), and the same with 21,000 in
// a flooding namespace over it.
func BenchmarkEndpointResources(b *testing.B) {
	for _, bc := range []struct {
		name string
		set  map[string][]xdsclient.Endpoint
	}{
		{"at the bound", many("shop", "svc", 200, 100, 1)},
		{"a namespace over it", join(many("shop", "svc", 100, 100, 1), many("flood", "big", 5, 4200, 2))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var served EndpointsServed
			for b.Loop() {
				var err error
				if _, served, err = endpointResources(bc.set, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(served.Bytes), "bytes/push")
			b.ReportMetric(float64(served.Bytes)/float64(served.Endpoints), "bytes/endpoint")
		})
	}
}

package xds

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/wellknown"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// nameTypes are the xDS types other than CDS, in which a client may name
// what it likes; CDS, asked for last with no names, says whether the
// stream is still served.
var nameTypes = []string{resource.EndpointType, resource.RouteType, resource.ScopedRouteType, resource.VirtualHostType,
	resource.ListenerType, resource.SecretType, resource.RuntimeType, resource.ExtensionConfigType, resource.RateLimitConfigType}

// namesOf are n names of size bytes, each its own (prefix tells the
// sets apart).
func namesOf(prefix string, n, size int) []string {
	out := make([]string, n)
	for i := range out {
		s := fmt.Sprintf("%s-%d-", prefix, i)
		out[i] = s + strings.Repeat("x", size-len(s))
	}
	return out
}

// TestSubscribedNameBounds: what a stream's subscriptions make the server
// hold is bounded in bytes, not only in names. Before, a delta stream
// subscribing, a request at a time, to names of 250 KB made the server
// hold 52.5 MB for 200 of them (5 GB at MaxDeltaNames), and a
// state-of-the-world stream's 256 KiB of short names in each of the 10
// types held 24 MB.
func TestSubscribedNameBounds(t *testing.T) {
	longest := strings.Repeat("x", MaxResourceNameBytes)
	tooLong := longest + "x"
	type delta = discovery.DeltaDiscoveryRequest
	type sotw = discovery.DiscoveryRequest
	// spread is names of size bytes over types, perReq names a request.
	spread := func(types []string, perType, perReq, size int) (reqs []*delta) {
		for i, ty := range types {
			names := namesOf(fmt.Sprint("t", i), perType, size)
			for len(names) > 0 {
				n := min(perReq, len(names))
				reqs = append(reqs, &delta{TypeUrl: ty, ResourceNamesSubscribe: names[:n]})
				names = names[n:]
			}
		}
		return reqs
	}
	var resubscribed []*delta
	for i := range 3 {
		// The longest names served, 5,000 (2 MB) at a time: the bound
		// counts what is held, not what was ever subscribed.
		names := namesOf(fmt.Sprint("set", i), 5000, 306)
		for j := 0; j < len(names); j += 500 {
			resubscribed = append(resubscribed, &delta{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: names[j : j+500]})
		}
		for j := 0; j < len(names); j += 500 {
			resubscribed = append(resubscribed, &delta{TypeUrl: resource.EndpointType, ResourceNamesUnsubscribe: names[j : j+500]})
		}
	}
	var replaced []*sotw
	for i := range 20 {
		// 396 KB of names a request, 20 times in one type: replaced.
		replaced = append(replaced, &sotw{TypeUrl: resource.EndpointType, ResourceNames: namesOf(fmt.Sprint("r", i), 3000, 20)})
	}
	var sotwTypes []*sotw
	for _, ty := range nameTypes {
		// 4,000 names of 8 bytes in each of 9 types: 4.3 MB counted.
		sotwTypes = append(sotwTypes, &sotw{TypeUrl: ty, ResourceNames: namesOf("s", 4000, 8)})
	}

	for _, tc := range []struct {
		name  string
		delta []*delta
		sotw  []*sotw
		want  string // in the refusal; "" for served
	}{
		{name: "delta: a name longer than any served", delta: []*delta{{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"geo.shop.svc.cluster.local:80", tooLong}}},
			want: fmt.Sprintf("a resource name of %d bytes: at most %d", len(tooLong), MaxResourceNameBytes)},
		{name: "delta: an initial version's name longer than any served", delta: []*delta{{TypeUrl: resource.EndpointType, InitialResourceVersions: map[string]string{tooLong: "1"}}},
			want: fmt.Sprintf("a resource name of %d bytes", len(tooLong))},
		{name: "delta: names of 512 bytes past the bytes, under the count", delta: spread(nameTypes[:1], 8000, 400, MaxResourceNameBytes),
			want: fmt.Sprintf("at most %d", MaxSubscribedNameBytes)},
		{name: "delta: short names in many types past the bytes", delta: spread(nameTypes[:6], 6000, 6000, 20),
			want: fmt.Sprintf("at most %d", MaxSubscribedNameBytes)},
		{name: "delta: names of the longest length served, at the bound", delta: []*delta{{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{longest}}}},
		{name: "delta: names let go make room", delta: resubscribed},
		{name: "sotw: a name longer than any served", sotw: []*sotw{{TypeUrl: resource.EndpointType, ResourceNames: []string{tooLong}}},
			want: fmt.Sprintf("a resource name of %d bytes: at most %d", len(tooLong), MaxResourceNameBytes)},
		{name: "sotw: short names in every type past the bytes", sotw: sotwTypes,
			want: fmt.Sprintf("at most %d", MaxSubscribedNameBytes)},
		{name: "sotw: a type's names replace its last ones", sotw: replaced},
		{name: "sotw: names of the longest length served, at the bound", sotw: []*sotw{{TypeUrl: resource.EndpointType, ResourceNames: []string{longest}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			s := NewServer(ctx, nil)
			if err := s.Set(meshWide(t), nil); err != nil {
				t.Fatal(err)
			}
			addr, stop := serve(t, s, "127.0.0.1:0")
			defer stop()
			ads := discovery.NewAggregatedDiscoveryServiceClient(rawConn(t, addr))
			node := typedNode("p", "shop", "web")
			var recvErr error
			if tc.delta != nil {
				st, err := ads.DeltaAggregatedResources(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, req := range append(tc.delta, &delta{TypeUrl: clusterType}) {
					req.Node = node
					if err := st.Send(req); err != nil {
						break // refused: Recv says why
					}
				}
				for recvErr == nil {
					var resp *discovery.DeltaDiscoveryResponse
					if resp, recvErr = st.Recv(); recvErr == nil && resp.GetTypeUrl() == clusterType {
						break
					}
				}
			} else {
				st, err := ads.StreamAggregatedResources(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, req := range append(tc.sotw, &sotw{TypeUrl: clusterType}) {
					req.Node = node
					if err := st.Send(req); err != nil {
						break
					}
				}
				for recvErr == nil {
					var resp *discovery.DiscoveryResponse
					if resp, recvErr = st.Recv(); recvErr == nil && resp.GetTypeUrl() == clusterType {
						break
					}
				}
			}
			if tc.want == "" {
				if recvErr != nil {
					t.Fatalf("refused: %v", recvErr)
				}
				return
			}
			if status.Code(recvErr) != codes.InvalidArgument || !strings.Contains(status.Convert(recvErr).Message(), tc.want) {
				t.Fatalf("got %v, want InvalidArgument with %q", recvErr, tc.want)
			}
			waitFor(t, "nothing held for the refused stream", func() bool {
				s.mu.Lock()
				defer s.mu.Unlock()
				return len(s.subs) == 0
			})
		})
	}
}

// TestLongestResourceName: MaxResourceNameBytes is above every name the
// server serves: the longest cluster (a qualified Service spelling of
// the longest labels, with a port; an external host of 253 bytes) and
// the longest EDS name.
func TestLongestResourceName(t *testing.T) {
	a, b := strings.Repeat("a", 63), strings.Repeat("b", 63)
	host := strings.Repeat(strings.Repeat("c", 62)+".", 4) + "d" // 253 bytes
	want := map[string]int{
		a + "." + b + ".svc.cluster.local:65535": 306,
		host + ":65535":                          269,
	}
	for svc, n := range want {
		clusters, _, _, err := Resources(pol(t, "shop", "{service: "+svc+"}"), "shop")
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range clusters {
			name := c.(interface{ GetName() string }).GetName()
			if strings.HasPrefix(name, "outbound|") && len(name) != n {
				t.Errorf("%s: cluster %s of %d bytes, want %d", svc, name, len(name), n)
			}
			if len(name) > MaxResourceNameBytes {
				t.Errorf("cluster %s of %d bytes: over MaxResourceNameBytes (%d)", name, len(name), MaxResourceNameBytes)
			}
		}
	}
	if eds := wellknown.EndpointName(a, b, 65535); len(eds) != 151 || len(eds) > MaxResourceNameBytes {
		t.Errorf("EDS name %s of %d bytes, want 151", eds, len(eds))
	}
}

// TestNamespaceNotAString: a node whose metadata namespace is not a
// string is refused, not served the default namespace's policies as if
// it named none (a value that is not a string reads as "").
func TestNamespaceNotAString(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := NewServer(ctx, nil)
	if err := s.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	conn := rawConn(t, addr)
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	nodeWith := func(v any) *corev3.Node {
		md, err := structpb.NewStruct(map[string]any{xdsclient.NamespaceKey: v})
		if err != nil {
			t.Fatal(err)
		}
		return &corev3.Node{Id: "x", Metadata: md}
	}
	for _, tc := range []struct {
		value any
		kind  string // "" for served
	}{
		{12345, "a number"},
		{true, "a bool"},
		{[]any{"shop"}, "a list"},
		{map[string]any{"name": "shop"}, "a struct"},
		{nil, "null"},
		{"shop", ""},
	} {
		t.Run(fmt.Sprint(tc.value), func(t *testing.T) {
			check := func(how string, err error) {
				t.Helper()
				if tc.kind == "" {
					if err != nil {
						t.Fatalf("%s: %v", how, err)
					}
					return
				}
				want := fmt.Sprintf("metadata %s is %s, not a string", xdsclient.NamespaceKey, tc.kind)
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), want) {
					t.Fatalf("%s: %v, want InvalidArgument with %q", how, err, want)
				}
			}

			st, err := ads.StreamAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&discovery.DiscoveryRequest{Node: nodeWith(tc.value), TypeUrl: clusterType}); err != nil {
				t.Fatal(err)
			}
			_, err = st.Recv()
			check("first request", err)

			d, err := ads.DeltaAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Send(&discovery.DeltaDiscoveryRequest{Node: nodeWith(tc.value), TypeUrl: clusterType}); err != nil {
				t.Fatal(err)
			}
			_, err = d.Recv()
			check("delta", err)

			_, err = clusterservice.NewClusterDiscoveryServiceClient(conn).FetchClusters(ctx, &discovery.DiscoveryRequest{Node: nodeWith(tc.value), TypeUrl: clusterType})
			check("fetch", err)

			if tc.kind == "" {
				return
			}
			// A stream of the default namespace (its node names none)
			// whose later node names one that is not a string.
			st, err = ads.StreamAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "x"}, TypeUrl: clusterType}); err != nil {
				t.Fatal(err)
			}
			resp, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&discovery.DiscoveryRequest{Node: nodeWith(tc.value), TypeUrl: clusterType, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
				t.Fatal(err)
			}
			_, err = st.Recv()
			check("a later request", err)
		})
	}
}

package xdsclient

import (
	"errors"
	"math"
	"net/netip"
	"reflect"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/internal/protoenc"
)

// The fuzz targets hold the hand-written decoders (wire.go) to the
// generated types': whatever the bytes, no panic; and when proto.Unmarshal
// of the generated type accepts them, the hand-written decoder either
// gives what the generated getters give, or refuses them for one of the
// documented reasons (refused), never a different value.

// refused: the decoder's deliberate refusals of what proto.Unmarshal
// accepts: a known field of another wire type, or a group (which
// proto.Unmarshal keeps as unknown); a Struct nested deeper than maxDepth.
func refused(err error) bool {
	return errors.Is(err, errWireType) || errors.Is(err, errDepth) || errors.Is(err, errBound)
}

func clusterSeeds(f *testing.F) {
	md, err := structpb.NewStruct(map[string]any{
		"policy": "geo", "namespace": "shop",
		"spec": map[string]any{"service": "geo", "retries": map[string]any{"attempts": 3.0, "on": []any{"5xx", "reset"}},
			"timeout": "2s", "n": -1.5, "on": true, "none": nil, "list": []any{1.0, []any{}, map[string]any{}}},
	})
	if err != nil {
		f.Fatal(err)
	}
	other, _ := structpb.NewStruct(map[string]any{"x": "y"})
	for _, c := range []*clusterv3.Cluster{
		{Name: "outbound|80||geo.shop.svc.cluster.local",
			Metadata:             &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: md, "other": other}},
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}},
		{Name: "x"},
		{Name: "y", Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: {}}}},
	} {
		f.Add(marshal(f, c))
	}
	// The oneof of Value set twice, as a struct and as a list: merged.
	s1, _ := structpb.NewStruct(map[string]any{"a": map[string]any{"x": 1.0}, "l": []any{1.0}})
	s2, _ := structpb.NewStruct(map[string]any{"a": map[string]any{"y": 2.0}, "l": []any{"two"}})
	b := marshal(f, &clusterv3.Cluster{Name: "m", Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: s1}}})
	f.Add(append(b, marshal(f, &clusterv3.Cluster{Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: s2}}})...))
	// Within one Value, struct_value twice merges and list_value twice
	// concatenates (proto.Unmarshal merges a oneof's message set again).
	v1, _ := structpb.NewValue(map[string]any{"a": 1.0, "l": []any{1.0}})
	v2, _ := structpb.NewValue(map[string]any{"b": 2.0, "l": []any{"x"}})
	l1, _ := structpb.NewValue([]any{1.0})
	l2, _ := structpb.NewValue([]any{"x"})
	for _, pair := range [][2]*structpb.Value{{v1, v2}, {l1, l2}, {v1, l2}} {
		val := append(marshal(f, pair[0]), marshal(f, pair[1])...)
		entry := protoenc.Message(protoenc.String(nil, 1, "spec"), 2, val)
		st := protoenc.Message(nil, 1, entry)
		md := protoenc.Message(protoenc.String(nil, 1, MetadataKey), 2, st)
		f.Add(protoenc.Message(protoenc.String(nil, 1, "merge"), 25, protoenc.Message(nil, 1, md)))
	}
	nan := &structpb.Struct{Fields: map[string]*structpb.Value{"n": structpb.NewNumberValue(math.NaN()),
		"i": structpb.NewNumberValue(math.Inf(1)), "j": structpb.NewNumberValue(math.Inf(-1))}}
	f.Add(marshal(f, &clusterv3.Cluster{Name: "nan", Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: nan}}}))
}

// bothDecode reports whether b, which the decoder read with err, is a
// message both it and proto.Unmarshal (into typed) take; a refusal of the
// decoder's that proto.Unmarshal does not share fails t unless it is one
// of the decoder's own bounds.
func bothDecode(t *testing.T, b []byte, typed proto.Message, err error) bool {
	t.Helper()
	if proto.Unmarshal(b, typed) != nil {
		return false
	}
	if err != nil {
		if !refused(err) {
			t.Fatalf("proto.Unmarshal accepts what the decoder refuses: %v", err)
		}
		return false
	}
	return true
}

// sameOutcome: the decoder's path and the typed one end alike, in the
// same value or the same error.
func sameOutcome(got any, err error, want any, werr error) bool {
	return (err == nil) == (werr == nil) && (err == nil || err.Error() == werr.Error()) && reflect.DeepEqual(got, want)
}

// FuzzCluster: the cluster's name and minimesh metadata as the generated
// Cluster and structpb's AsMap give them, and the policy FromCluster
// rebuilds from it as the typed path (AsMap, then fromCluster) does.
func FuzzCluster(f *testing.F) {
	clusterSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var c cluster
		err := c.unmarshal(b)
		var typed clusterv3.Cluster
		if !bothDecode(t, b, &typed, err) {
			return
		}
		want := cluster{name: typed.GetName()}
		if st := typed.GetMetadata().GetFilterMetadata()[MetadataKey]; st != nil {
			want.md = st.AsMap()
		}
		if c.name != want.name || !reflect.DeepEqual(c.md, want.md) {
			t.Fatalf("decoded %#v\nwant %#v", c, want)
		}
		p, _, err := fromCluster(&c)
		wp, _, werr := fromCluster(&want)
		if !sameOutcome(p, err, wp, werr) {
			t.Fatalf("policy %v %v\nwant %v %v", p, err, wp, werr)
		}
	})
}

func loadAssignmentSeeds(f *testing.F) {
	eps := []Endpoint{
		{Addr: netip.MustParseAddrPort("10.0.0.1:80")},
		{Addr: netip.MustParseAddrPort("10.0.0.2:80"), Terminating: true, Zone: "a"},
		{Addr: netip.MustParseAddrPort("[fd00::1]:8080"), Zone: "b"},
	}
	f.Add(marshal(f, LoadAssignment(geo, eps)))
	f.Add(marshal(f, LoadAssignment(geo, nil)))
	sock := func(sa *corev3.SocketAddress, h corev3.HealthStatus) *endpointv3.LbEndpoint {
		return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: sa}}}}, HealthStatus: h}
	}
	f.Add(marshal(f, &endpointv3.ClusterLoadAssignment{ClusterName: geo, Endpoints: []*endpointv3.LocalityLbEndpoints{
		{Locality: &corev3.Locality{Region: "r", Zone: "z"}, LbEndpoints: []*endpointv3.LbEndpoint{
			sock(&corev3.SocketAddress{Address: "10.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}, corev3.HealthStatus_UNHEALTHY),
			sock(&corev3.SocketAddress{Address: "10.0.0.2", PortSpecifier: &corev3.SocketAddress_NamedPort{NamedPort: "http"}}, 0),
			{HostIdentifier: &endpointv3.LbEndpoint_EndpointName{EndpointName: "named"}},
			{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
				Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/p"}}}}}},
		}},
	}}))
}

// typedLoadAssignment is what the decoder reads of a generated
// ClusterLoadAssignment, through its getters.
func typedLoadAssignment(cla *endpointv3.ClusterLoadAssignment) loadAssignment {
	l := loadAssignment{name: cla.GetClusterName()}
	for _, le := range cla.GetEndpoints() {
		loc := locality{zone: le.GetLocality().GetZone()}
		for _, lb := range le.GetLbEndpoints() {
			e := lbEndpoint{health: int32(lb.GetHealthStatus())}
			if sa := lb.GetEndpoint().GetAddress().GetSocketAddress(); sa != nil {
				e.hasSocket, e.address, e.port = true, sa.GetAddress(), sa.GetPortValue()
			}
			loc.lbs = append(loc.lbs, e)
		}
		l.localities = append(l.localities, loc)
	}
	return l
}

// FuzzLoadAssignment: a ClusterLoadAssignment decodes as the generated
// type's getters read it, and FromLoadAssignment's endpoints (or error)
// are those of the typed path.
func FuzzLoadAssignment(f *testing.F) {
	loadAssignmentSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		eps, err := FromLoadAssignment(b)
		var cla loadAssignment
		derr := cla.unmarshal(b)
		if (err == nil) != (derr == nil) && derr != nil {
			t.Fatalf("FromLoadAssignment %v, but the decoder %v", err, derr)
		}
		var typed endpointv3.ClusterLoadAssignment
		if !bothDecode(t, b, &typed, derr) {
			return
		}
		want := typedLoadAssignment(&typed)
		if !reflect.DeepEqual(cla, want) {
			t.Fatalf("decoded %+v\nwant %+v", cla, want)
		}
		weps, werr := fromLoadAssignment(&want)
		if !sameOutcome(eps, err, weps, werr) {
			t.Fatalf("endpoints %v %v\nwant %v %v", eps, err, weps, werr)
		}
		if len(eps) > len(b) {
			t.Fatalf("%d endpoints from %d bytes", len(eps), len(b))
		}
	})
}

// FuzzDiscoveryResponse: the fields of a DiscoveryResponse the client
// reads, as the generated type has them.
func FuzzDiscoveryResponse(f *testing.F) {
	a, err := anypb.New(LoadAssignment(geo, []Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.1:80")}}))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(marshal(f, &discovery.DiscoveryResponse{VersionInfo: "v1", Resources: []*anypb.Any{a, a}, TypeUrl: endpointType, Nonce: "1",
		Canary: true, ControlPlane: &corev3.ControlPlane{Identifier: "minimesh"}}))
	f.Add(marshal(f, &discovery.DiscoveryResponse{TypeUrl: clusterType, Resources: []*anypb.Any{{}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r discoveryResponse
		err := r.unmarshal(b)
		var typed discovery.DiscoveryResponse
		if !bothDecode(t, b, &typed, err) {
			return
		}
		if r.versionInfo != typed.GetVersionInfo() || r.typeURL != typed.GetTypeUrl() || r.nonce != typed.GetNonce() ||
			len(r.resources) != len(typed.GetResources()) {
			t.Fatalf("decoded %+v\nwant %v", r, &typed)
		}
		for i, a := range typed.GetResources() {
			if r.resources[i].typeURL != a.GetTypeUrl() || string(r.resources[i].value) != string(a.GetValue()) {
				t.Fatalf("resource %d: %+v, want %v", i, r.resources[i], a)
			}
		}
	})
}

// TestDepthBound: a Struct nested past maxDepth is refused (errDepth),
// however deep, rather than recursed into.
func TestDepthBound(t *testing.T) {
	v := structpb.NewStringValue("x")
	for range 200 {
		v = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"a": v}})
	}
	if _, err := decodeValue(marshal(t, v), 0, &valueBudget{left: 1 << 20}); !errors.Is(err, errDepth) {
		t.Fatalf("200 Structs deep: %v", err)
	}
	v = structpb.NewStringValue("x")
	for range 200 {
		v = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{v}})
	}
	if _, err := decodeValue(marshal(t, v), 0, &valueBudget{left: 1 << 20}); !errors.Is(err, errDepth) {
		t.Fatalf("200 lists deep: %v", err)
	}
}

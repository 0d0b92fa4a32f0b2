package xdsclient

import (
	"bytes"
	"math"
	"reflect"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The generated types live only in the tests: they hold the hand-written
// encoding and decoding (wire.go) equal to go-control-plane's.

// LoadAssignment is the control plane's ClusterLoadAssignment of eps (the
// server's xds.LoadAssignment), for the tests' fake server.
func LoadAssignment(name string, eps []Endpoint) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	byZone := map[string]*endpointv3.LocalityLbEndpoints{}
	for _, e := range eps {
		l := byZone[e.Zone]
		if l == nil {
			l = &endpointv3.LocalityLbEndpoints{}
			if e.Zone != "" {
				l.Locality = &corev3.Locality{Zone: e.Zone}
			}
			byZone[e.Zone] = l
			cla.Endpoints = append(cla.Endpoints, l)
		}
		health := corev3.HealthStatus_HEALTHY
		if e.Terminating {
			health = corev3.HealthStatus_DRAINING
		}
		l.LbEndpoints = append(l.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       e.Addr.Addr().String(),
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(e.Addr.Port())},
				}}},
			}},
			HealthStatus: health,
		})
	}
	return cla
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fromTyped is FromLoadAssignment of a generated ClusterLoadAssignment.
func fromTyped(t *testing.T, cla *endpointv3.ClusterLoadAssignment) ([]Endpoint, error) {
	return FromLoadAssignment(marshal(t, cla))
}

// res is the resources of a response as the client reads them.
func res(as []*anypb.Any) []resource {
	out := make([]resource, len(as))
	for i, a := range as {
		out[i] = resource{typeURL: a.GetTypeUrl(), value: a.GetValue()}
	}
	return out
}

// TestRequestEncoding: the requests the client sends are byte for byte
// the generated DiscoveryRequest's deterministic encoding.
func TestRequestEncoding(t *testing.T) {
	n := Node("web-1", "shop", "web")
	md, _ := structpb.NewStruct(map[string]any{NamespaceKey: "shop", "service": "web"})
	typedNode := &corev3.Node{Id: "shop/web-1", Cluster: "web", Metadata: md}
	msg := "cluster geo: bad"
	for _, c := range []struct {
		ours  discoveryRequest
		typed *discovery.DiscoveryRequest
	}{
		{discoveryRequest{node: n, typeURL: clusterType}, &discovery.DiscoveryRequest{Node: typedNode, TypeUrl: clusterType}},
		{discoveryRequest{node: n, typeURL: endpointType, versionInfo: "v1", nonce: "7"},
			&discovery.DiscoveryRequest{Node: typedNode, TypeUrl: endpointType, VersionInfo: "v1", ResponseNonce: "7"}},
		{discoveryRequest{node: n, typeURL: clusterType, versionInfo: "v1", nonce: "8", errorDetail: &msg},
			&discovery.DiscoveryRequest{Node: typedNode, TypeUrl: clusterType, VersionInfo: "v1", ResponseNonce: "8", ErrorDetail: &rpcstatus.Status{Message: msg}}},
		{discoveryRequest{node: &NodeInfo{ID: "envoy-1", Cluster: "edge"}, typeURL: clusterType},
			&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "envoy-1", Cluster: "edge"}, TypeUrl: clusterType}},
	} {
		if got, want := c.ours.marshal(), marshal(t, c.typed); !bytes.Equal(got, want) {
			var back discovery.DiscoveryRequest
			err := proto.Unmarshal(got, &back)
			t.Errorf("encoding differs:\n got %x\nwant %x\n(ours decodes as %v, %v)", got, want, &back, err)
		}
	}
}

// TestResponseDecoding: a DiscoveryResponse with every field set, and a
// Cluster with many fields besides its name and metadata, decode to what
// the generated types say; the metadata as structpb's AsMap.
func TestResponseDecoding(t *testing.T) {
	md, err := structpb.NewStruct(map[string]any{
		"policy": "geo", "namespace": "shop",
		"spec": map[string]any{"service": "geo", "n": 3.5, "neg": -1.0, "big": math.MaxFloat64, "on": true, "off": false, "none": nil,
			"list": []any{1.0, "two", []any{}, map[string]any{}, nil, map[string]any{"x": []any{true}}}, "empty": map[string]any{}, "é": "ü"},
	})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := structpb.NewStruct(map[string]any{"x": "y"})
	c := &clusterv3.Cluster{
		Name:           "outbound|80||geo.shop.svc.cluster.local",
		ConnectTimeout: durationpb.New(5e9),
		AltStatName:    "geo",
		Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: md, "other": other},
			TypedFilterMetadata: map[string]*anypb.Any{"t": {TypeUrl: "x/y", Value: []byte{1, 2}}}},
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(1024),
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
	}
	a, err := anypb.New(c)
	if err != nil {
		t.Fatal(err)
	}
	resp := &discovery.DiscoveryResponse{VersionInfo: "v9", Resources: []*anypb.Any{a, a}, Canary: true, TypeUrl: clusterType, Nonce: "n1",
		ControlPlane: &corev3.ControlPlane{Identifier: "minimesh"}}
	var got discoveryResponse
	if err := got.unmarshal(marshal(t, resp)); err != nil {
		t.Fatal(err)
	}
	if got.versionInfo != "v9" || got.typeURL != clusterType || got.nonce != "n1" || len(got.resources) != 2 ||
		got.resources[1].typeURL != a.TypeUrl || !bytes.Equal(got.resources[1].value, a.Value) {
		t.Fatalf("response: %+v", got)
	}
	var cl cluster
	if err := cl.unmarshal(got.resources[0].value); err != nil {
		t.Fatal(err)
	}
	if cl.name != c.Name || !reflect.DeepEqual(cl.md, md.AsMap()) {
		t.Fatalf("cluster: %q %#v\nwant %#v", cl.name, cl.md, md.AsMap())
	}
	if _, err := FromCluster(marshal(t, &clusterv3.Cluster{Name: "x"})); err == nil {
		t.Fatal("a cluster without metadata decoded")
	}
	// Malformed input is an error, never a panic.
	b := marshal(t, c)
	for i := range b {
		var cl cluster
		_ = cl.unmarshal(b[:i])
		var cla loadAssignment
		_ = cla.unmarshal(b[:i])
		var r discoveryResponse
		_ = r.unmarshal(b[:i])
	}
	if err := (&cluster{}).unmarshal([]byte{0x0a, 0x02, 0xff, 0xfe}); err == nil {
		t.Fatal("a name not valid UTF-8 decoded")
	}
}

// TestLoadAssignmentDecoding: the host identifiers and addresses that are
// not an IP socket address with a port value decode as none, as the
// generated getters return them.
func TestLoadAssignmentDecoding(t *testing.T) {
	sock := func(sa *corev3.SocketAddress) *endpointv3.LbEndpoint {
		return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: sa}}, Hostname: "h"}},
			LoadBalancingWeight: wrapperspb.UInt32(3), Metadata: &corev3.Metadata{}}
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: geo, Endpoints: []*endpointv3.LocalityLbEndpoints{
		{Locality: &corev3.Locality{Region: "r", Zone: "z", SubZone: "s"}, Priority: 1, LoadBalancingWeight: wrapperspb.UInt32(2), LbEndpoints: []*endpointv3.LbEndpoint{
			sock(&corev3.SocketAddress{Address: "10.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}, ResolverName: "r"}),
			sock(&corev3.SocketAddress{Address: "10.0.0.2", PortSpecifier: &corev3.SocketAddress_NamedPort{NamedPort: "http"}}),
			{HostIdentifier: &endpointv3.LbEndpoint_EndpointName{EndpointName: "named"}, HealthStatus: corev3.HealthStatus_DEGRADED},
			{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
				Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/p"}}}}}},
		}},
	}, Policy: &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(140)}}
	var got loadAssignment
	if err := got.unmarshal(marshal(t, cla)); err != nil {
		t.Fatal(err)
	}
	want := loadAssignment{name: geo, localities: []locality{{zone: "z", lbs: []lbEndpoint{
		{hasSocket: true, address: "10.0.0.1", port: 80},
		{hasSocket: true, address: "10.0.0.2"},
		{health: 5},
		{},
	}}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

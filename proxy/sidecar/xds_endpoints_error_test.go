package sidecar_test

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/sidecar"
	"github.com/minimesh/minimesh/xds"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// stepADS answers a sidecar's stream with the responses the test hands
// it, in order, each when the test sends it: the test decides when the
// control plane speaks, with no sleep.
type stepADS struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	send  chan *discovery.DiscoveryResponse
	nacks chan string
}

func (f *stepADS) StreamAggregatedResources(st discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	go func() {
		for {
			req, err := st.Recv()
			if err != nil {
				return
			}
			if d := req.GetErrorDetail(); d != nil {
				f.nacks <- d.GetMessage()
			}
		}
	}()
	for n := 0; ; n++ {
		select {
		case resp := <-f.send:
			resp.Nonce = strconv.Itoa(n)
			if err := st.Send(resp); err != nil {
				return nil
			}
		case <-st.Context().Done():
			return nil
		}
	}
}

// TestXDSEndpointsErrorClearsOnItsOwn: /debug/config shows endpoints the
// sidecar refused as endpointsError until good endpoints are applied,
// whatever policies come between; a good policy push does not clear it,
// and good endpoints do not leave it shown (both did, with one lastError
// for both kinds).
func TestXDSEndpointsErrorClearsOnItsOwn(t *testing.T) {
	name := "geo.default.svc.cluster.local:80"
	good := xds.LoadAssignment(name, []xdsclient.Endpoint{{Addr: netip.MustParseAddrPort("10.1.2.3:8080")}})
	bad := xds.LoadAssignment(name, []xdsclient.Endpoint{{Addr: netip.MustParseAddrPort("10.1.2.3:8080")}})
	bad.Endpoints[0].LbEndpoints[0].GetEndpoint().Address = &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{Address: "geo.example.com", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}}
	goodAny, err := anypb.New(good)
	if err != nil {
		t.Fatal(err)
	}
	badAny, err := anypb.New(bad)
	if err != nil {
		t.Fatal(err)
	}
	f := &stepADS{send: make(chan *discovery.DiscoveryResponse, 4), nacks: make(chan string, 4)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, f)
	go g.Serve(l)
	t.Cleanup(g.Stop)

	f.send <- &discovery.DiscoveryResponse{TypeUrl: resourcev3.ClusterType, VersionInfo: "c1"}
	f.send <- &discovery.DiscoveryResponse{TypeUrl: resourcev3.EndpointType, VersionInfo: "e1", Resources: []*anypb.Any{badAny}}
	r := start(t, sidecar.Config{XDSAddress: l.Addr().String(), XDSInitialTimeout: 2 * time.Second})
	select {
	case <-f.nacks:
	case <-time.After(10 * time.Second):
		t.Fatal("the sidecar never refused the endpoints with a host name for an address")
	}
	type shown struct {
		xdsConfig
		EndpointsError string `json:"endpointsError"`
	}
	config := func() shown {
		var c shown
		_, body := r.adminGet(t, "/debug/config")
		if err := jsonUnmarshal(body, &c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	var c shown
	if !proxytest.Poll(5*time.Second, 10*time.Millisecond, func() bool { c = config(); return c.EndpointsError != "" }) {
		t.Fatalf("after the refused endpoints: no endpointsError in /debug/config (%+v)", c)
	}
	if !strings.Contains(c.EndpointsError, "geo.example.com") || c.LastError != "" {
		t.Errorf("after the refused endpoints: endpointsError %q (want the address named), lastError %q (want none: the policies are good)", c.EndpointsError, c.LastError)
	}

	// A good policy push: the endpoints are still the refused ones'.
	ps, err := policy.Decode("geo.yaml", []byte(proxytest.GeoPolicy(3)))
	if err != nil {
		t.Fatal(err)
	}
	clusters, _, _, err := xds.Resources(ps, "default")
	if err != nil {
		t.Fatal(err)
	}
	cluster, err := anypb.New(clusters[0].(proto.Message))
	if err != nil {
		t.Fatal(err)
	}
	f.send <- &discovery.DiscoveryResponse{TypeUrl: resourcev3.ClusterType, VersionInfo: "c2", Resources: []*anypb.Any{cluster}}
	if !proxytest.Poll(5*time.Second, 10*time.Millisecond, func() bool { c = config(); return c.failures("geo-service") == 3 }) {
		t.Fatalf("the second policy push never applied (%+v)", c)
	}
	if c.EndpointsError == "" {
		t.Error("a good policy push cleared endpointsError, with the endpoints still refused")
	}

	f.send <- &discovery.DiscoveryResponse{TypeUrl: resourcev3.EndpointType, VersionInfo: "e2", Resources: []*anypb.Any{goodAny}}
	if !proxytest.Poll(5*time.Second, 10*time.Millisecond, func() bool { c = config(); return c.EndpointsError == "" }) {
		t.Fatalf("good endpoints applied, endpointsError still %q", c.EndpointsError)
	}
	if _, body := r.adminGet(t, "/debug/endpoints"); !strings.Contains(body, "10.1.2.3:8080") {
		t.Errorf("/debug/endpoints after the good endpoints: %s", body)
	}
}

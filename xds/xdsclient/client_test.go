package xdsclient

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/wellknown"
)

// fakeADS is a scripted ADS server: the test sends responses on out and
// reads the client's requests from in.
type fakeADS struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	in  chan *discovery.DiscoveryRequest
	out chan *discovery.DiscoveryResponse
}

func (f *fakeADS) StreamAggregatedResources(st discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	go func() {
		for {
			req, err := st.Recv()
			if err != nil {
				return
			}
			f.in <- req
		}
	}()
	for {
		select {
		case <-st.Context().Done():
			return nil
		case resp := <-f.out:
			if err := st.Send(resp); err != nil {
				return err
			}
		}
	}
}

func startFake(t *testing.T) (*fakeADS, string, func()) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeADS{in: make(chan *discovery.DiscoveryRequest, 100), out: make(chan *discovery.DiscoveryResponse)}
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, f)
	go g.Serve(l)
	return f, l.Addr().String(), g.Stop
}

func (f *fakeADS) next(t *testing.T, typeURL string) *discovery.DiscoveryRequest {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case req := <-f.in:
			if req.GetTypeUrl() == typeURL {
				return req
			}
		case <-timeout:
			t.Fatalf("no %s request in 10 s", typeURL)
		}
	}
}

func anys(t *testing.T, ms ...proto.Message) []*anypb.Any {
	t.Helper()
	var out []*anypb.Any
	for _, m := range ms {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

func geoCluster(t *testing.T, failures int) *clusterv3.Cluster {
	t.Helper()
	md, err := structpb.NewStruct(map[string]any{"policy": "geo", "namespace": "shop",
		"spec": map[string]any{"service": "geo", "circuitBreaker": map[string]any{"consecutiveFailures": failures}}})
	if err != nil {
		t.Fatal(err)
	}
	return &clusterv3.Cluster{Name: "outbound|80||geo.shop.svc.cluster.local", Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: md}}}
}

type state struct {
	mu   sync.Mutex
	pols []*policy.ResiliencePolicy
	eps  map[string][]Endpoint
	n    int
}

func (s *state) endpoints() (map[string][]Endpoint, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eps, s.n
}

var geo = wellknown.EndpointName("geo", "shop", 80)

// TestEndpointsNackPerType: bad endpoints are refused with a message
// naming the resource while the policies go on being applied on the same
// stream, even while the same bad content waits to be refused again; the
// last good endpoints stay; and the server going away keeps them.
func TestEndpointsNackPerType(t *testing.T) {
	f, addr, stop := startFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &state{}
	c := &Client{Addr: addr, Node: Node("p", "shop", "web"), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Apply: func(p []*policy.ResiliencePolicy, _ string) error {
			st.mu.Lock()
			st.pols = p
			st.mu.Unlock()
			return nil
		},
		ApplyEndpoints: func(e map[string][]Endpoint, _ string) error {
			st.mu.Lock()
			st.eps = e
			st.n++
			st.mu.Unlock()
			return nil
		}}
	go c.Run(ctx)
	f.next(t, clusterType)
	f.next(t, endpointType)

	good := LoadAssignment(geo, []Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.1:8080")}, {Addr: netip.MustParseAddrPort("10.0.0.2:8080"), Terminating: true, Zone: "b"}})
	f.out <- &discovery.DiscoveryResponse{TypeUrl: endpointType, VersionInfo: "e1", Nonce: "1", Resources: anys(t, good)}
	if ack := f.next(t, endpointType); ack.GetVersionInfo() != "e1" || ack.GetResponseNonce() != "1" || ack.GetErrorDetail() != nil {
		t.Fatalf("ACK %v", ack)
	}
	eps, _ := st.endpoints()
	want := []Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.1:8080")}, {Addr: netip.MustParseAddrPort("10.0.0.2:8080"), Terminating: true, Zone: "b"}}
	if !slices.Equal(eps[geo], want) {
		t.Fatalf("endpoints %v, want %v", eps[geo], want)
	}

	bad := LoadAssignment(wellknown.EndpointName("pay", "shop", 80), []Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.3:8080")}})
	bad.Endpoints[0].LbEndpoints[0].GetEndpoint().Address.GetSocketAddress().Address = "pay.example.com"
	badResp := &discovery.DiscoveryResponse{TypeUrl: endpointType, VersionInfo: "e2", Nonce: "2", Resources: anys(t, good, bad)}
	f.out <- badResp
	nack := f.next(t, endpointType)
	if nack.GetErrorDetail() == nil || !strings.Contains(nack.GetErrorDetail().GetMessage(), `"pay.shop.svc.cluster.local:80"`) || nack.GetVersionInfo() != "e1" {
		t.Fatalf("NACK %v: want the last good version and a message naming the resource", nack)
	}
	// The same content again: its refusal waits (1 s), and meanwhile the
	// policies are applied at once.
	badResp.Nonce = "3"
	f.out <- badResp
	start := time.Now()
	f.out <- &discovery.DiscoveryResponse{TypeUrl: clusterType, VersionInfo: "c1", Nonce: "4", Resources: anys(t, geoCluster(t, 3))}
	// The CDS ACK is the next request: had it waited behind the EDS
	// refusal, the refusal would come first. (Told by order, not by the
	// time taken, which a loaded machine stretches.)
	select {
	case ack := <-f.in:
		if ack.GetTypeUrl() != clusterType || ack.GetErrorDetail() != nil || ack.GetVersionInfo() != "c1" {
			t.Fatalf("the request after the CDS response: %v, want its ACK (did it wait behind the EDS refusal?)", ack)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no CDS ACK in 10 s")
	}
	if again := f.next(t, endpointType); again.GetErrorDetail() == nil || time.Since(start) < 800*time.Millisecond {
		t.Fatalf("the repeated refusal: %v after %v", again, time.Since(start))
	}
	if eps, n := st.endpoints(); n != 1 || !slices.Equal(eps[geo], want) {
		t.Fatalf("after the NACKs: %d applies, %v; want the first set kept", n, eps)
	}

	stop()
	time.Sleep(200 * time.Millisecond)
	if eps, n := st.endpoints(); n != 1 || !slices.Equal(eps[geo], want) {
		t.Fatalf("server gone: %d applies, %v", n, eps)
	}
}

// TestNoEndpointsAsked: without ApplyEndpoints the client asks for
// clusters only.
func TestNoEndpointsAsked(t *testing.T) {
	f, addr, stop := startFake(t)
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := &Client{Addr: addr, Node: Node("p", "shop", "web"), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Apply: func([]*policy.ResiliencePolicy, string) error { return nil }}
	go c.Run(ctx)
	if req := <-f.in; req.GetTypeUrl() != clusterType {
		t.Fatalf("first request for %s", req.GetTypeUrl())
	}
	select {
	case req := <-f.in:
		t.Fatalf("a request for %s", req.GetTypeUrl())
	case <-time.After(200 * time.Millisecond):
	}
}

func sockEP(addr string, port uint32, h corev3.HealthStatus) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HealthStatus: h, HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}}}
}

func TestFromLoadAssignment(t *testing.T) {
	cla := func(name string, eps ...*endpointv3.LbEndpoint) *endpointv3.ClusterLoadAssignment {
		return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{
			{Locality: &corev3.Locality{Zone: "a"}, LbEndpoints: eps}}}
	}
	got, err := fromTyped(t, cla(geo,
		sockEP("10.0.0.1", 80, corev3.HealthStatus_HEALTHY),
		sockEP("10.0.0.2", 80, corev3.HealthStatus_DRAINING),
		sockEP("10.0.0.3", 80, corev3.HealthStatus_UNHEALTHY),
		sockEP("10.0.0.4", 80, corev3.HealthStatus_UNKNOWN),
		sockEP("::ffff:10.0.0.1", 80, corev3.HealthStatus_DRAINING), // the same address: once, ready
		sockEP("2001:db8::1", 80, corev3.HealthStatus_HEALTHY)))
	if err != nil {
		t.Fatal(err)
	}
	want := []Endpoint{
		{Addr: netip.MustParseAddrPort("10.0.0.1:80"), Zone: "a"},
		{Addr: netip.MustParseAddrPort("10.0.0.2:80"), Terminating: true, Zone: "a"},
		{Addr: netip.MustParseAddrPort("10.0.0.4:80"), Zone: "a"},
		{Addr: netip.MustParseAddrPort("[2001:db8::1]:80"), Zone: "a"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	if back, _ := fromTyped(t, LoadAssignment(geo, want)); !slices.Equal(back, want) {
		t.Fatalf("round trip: %v", back)
	}

	for name, c := range map[string]*endpointv3.ClusterLoadAssignment{
		"a host name":     cla(geo, sockEP("geo.example.com", 80, 0)),
		"a zoned address": cla(geo, sockEP("fe80::1%eth0", 80, 0)),
		"port 0":          cla(geo, sockEP("10.0.0.1", 0, 0)),
		"port 65536":      cla(geo, sockEP("10.0.0.1", 65536, 0)),
		"no address":      cla(geo, &endpointv3.LbEndpoint{}),
		"a short name":    cla("geo:80", sockEP("10.0.0.1", 80, 0)),
		"no port":         cla("geo.shop.svc.cluster.local", sockEP("10.0.0.1", 80, 0)),
		"a bad port":      cla("geo.shop.svc.cluster.local:0", sockEP("10.0.0.1", 80, 0)),
		"another domain":  cla("geo.shop.example.com:80", sockEP("10.0.0.1", 80, 0)),
	} {
		if _, err := fromTyped(t, c); err == nil || !strings.Contains(err.Error(), c.GetClusterName()) {
			t.Errorf("%s: err %v, want one naming %q", name, err, c.GetClusterName())
		}
	}
}

func TestDecodeEndpointsBounds(t *testing.T) {
	var list []Endpoint
	for i := range MaxEndpoints/2 + 1 {
		list = append(list, Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 80)})
	}
	a := anys(t, LoadAssignment(wellknown.EndpointName("a", "shop", 80), list), LoadAssignment(wellknown.EndpointName("b", "shop", 80), list))
	if _, _, _, err := decodeEndpoints(res(a)); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("over the bound: %v", err)
	}
	if _, n, _, err := decodeEndpoints(res(a[:1])); err != nil || n != len(list) {
		t.Fatalf("under the bound: %d, %v", n, err)
	}
	// At the control plane's bound, which counts lb_endpoints alone, with
	// a dual-stack Service's ClusterIPs beside them: taken.
	for i := len(list); i < MaxEndpoints; i++ {
		list = append(list, Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 80)})
	}
	full := LoadAssignment(wellknown.EndpointName("a", "shop", 80), list)
	full.NamedEndpoints = withVIPs("", ClusterIPName, 80, "10.96.0.1", "fd00::1").NamedEndpoints
	if _, n, _, err := decodeEndpoints(res(anys(t, full))); err != nil || n != MaxEndpoints {
		t.Fatalf("at the bound with ClusterIPs: %d, %v", n, err)
	}
	// More dual-stack Service ports than MaxEndpoints, none with an
	// endpoint: the control plane serves them whole (its bound counts
	// lb_endpoints and bytes), so the sidecar takes them.
	var vips []proto.Message
	for i := range MaxEndpoints + 1 {
		vips = append(vips, withVIPs(wellknown.EndpointName(fmt.Sprintf("s%d", i), "a", 1), ClusterIPName, 1,
			netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}).String(), fmt.Sprintf("fd::%x", i)))
	}
	if _, ips, _, _, err := decodeEDS(res(anys(t, vips...))); err != nil || len(ips) != 2*(MaxEndpoints+1) {
		t.Fatalf("%d dual-stack ClusterIPs: %d mapped, %v", MaxEndpoints+1, len(ips), err)
	}
	twice := anys(t, LoadAssignment(geo, list[:1]), LoadAssignment(geo, list[1:2]))
	if _, _, _, err := decodeEndpoints(res(twice)); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("a name twice: %v", err)
	}
	if _, _, _, err := decodeEndpoints(res(anys(t, geoCluster(t, 3)))); err == nil {
		t.Fatal("a Cluster decoded as endpoints")
	}
}

// TestRefusedReported: a response refused by the decoder (a cluster name
// twice), which never reaches Apply, is reported to Refused, once per
// content refused; the good response after it is applied.
func TestRefusedReported(t *testing.T) {
	f, addr, stop := startFake(t)
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &state{}
	var mu sync.Mutex
	var refused []string
	c := &Client{Addr: addr, Node: Node("p", "shop", "web"), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Apply: func(p []*policy.ResiliencePolicy, _ string) error {
			st.mu.Lock()
			st.pols = p
			st.mu.Unlock()
			return nil
		},
		Refused: func(what string, err error) {
			mu.Lock()
			refused = append(refused, what+": "+err.Error())
			mu.Unlock()
		}}
	go c.Run(ctx)
	f.next(t, clusterType)
	twice := &discovery.DiscoveryResponse{TypeUrl: clusterType, VersionInfo: "c1", Nonce: "1", Resources: anys(t, geoCluster(t, 3), geoCluster(t, 4))}
	f.out <- twice
	if nack := f.next(t, clusterType); nack.GetErrorDetail() == nil {
		t.Fatalf("no NACK: %v", nack)
	}
	twice.Nonce = "2"
	f.out <- twice
	if nack := f.next(t, clusterType); nack.GetErrorDetail() == nil {
		t.Fatalf("no NACK: %v", nack)
	}
	f.out <- &discovery.DiscoveryResponse{TypeUrl: clusterType, VersionInfo: "c2", Nonce: "3", Resources: anys(t, geoCluster(t, 5))}
	if ack := f.next(t, clusterType); ack.GetErrorDetail() != nil || ack.GetVersionInfo() != "c2" {
		t.Fatalf("ACK %v", ack)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refused) != 1 || !strings.HasPrefix(refused[0], "policies: ") || !strings.Contains(refused[0], "twice in one response") {
		t.Fatalf("refusals reported: %q, want one for the policies naming the cluster twice", refused)
	}
}

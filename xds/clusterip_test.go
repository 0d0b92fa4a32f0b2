package xds

import (
	"context"
	"maps"
	"net/netip"
	"sync"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"

	"github.com/minimesh/minimesh/wellknown"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// ipRecorder is a sidecar's ApplyClusterIPs: the last map.
type ipRecorder struct {
	mu   sync.Mutex
	n    int
	last map[netip.AddrPort]string
}

func (r *ipRecorder) apply(ips map[netip.AddrPort]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	r.last = ips
}

func (r *ipRecorder) is(want map[netip.AddrPort]string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n > 0 && maps.Equal(r.last, want)
}

func aps(s ...string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range s {
		out = append(out, netip.MustParseAddrPort(a))
	}
	return out
}

// clusterIPSidecar is a server that expects endpoints, serving meshWide,
// and a sidecar of shop on it that records the endpoints and ClusterIPs
// it is sent; both run until the test ends.
func clusterIPSidecar(t *testing.T) (*Server, *epRecorder, *ipRecorder) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	s := NewServer(ctx, nil)
	s.ExpectEndpoints()
	addr, stop := serve(t, s, "127.0.0.1:0")
	t.Cleanup(stop)
	if err := s.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	er, ir := &epRecorder{}, &ipRecorder{}
	c := epClient(addr, "shop", newRecorder(), er)
	c.ApplyClusterIPs = ir.apply
	go c.Run(ctx)
	return s, er, ir
}

// TestServeClusterIPs: every Service port's ClusterIPs (both families)
// reach the sidecar with its endpoints, and a change or a removal of
// them reaches it as an endpoint change does; a Service without them
// (headless) maps no address.
func TestServeClusterIPs(t *testing.T) {
	s, er, ir := clusterIPSidecar(t)

	geo81 := wellknown.EndpointName("geo", "shop", 8001)
	headless := wellknown.EndpointName("db", "shop", 5432)
	eps := map[string][]xdsclient.Endpoint{
		geoName:  {ep("10.244.0.7:8080", false)},
		geo81:    {ep("10.244.0.7:8081", false)},
		headless: {ep("10.244.0.9:5432", false)},
	}
	ips := map[string][]netip.AddrPort{
		geoName: aps("10.96.0.15:8000", "[fd00:96::15]:8000"),
		geo81:   aps("10.96.0.15:8001", "[fd00:96::15]:8001"),
	}
	if _, err := s.SetServices(eps, ips); err != nil {
		t.Fatal(err)
	}
	want := map[netip.AddrPort]string{
		netip.MustParseAddrPort("10.96.0.15:8000"):    geoName,
		netip.MustParseAddrPort("[fd00:96::15]:8000"): geoName,
		netip.MustParseAddrPort("10.96.0.15:8001"):    geo81,
		netip.MustParseAddrPort("[fd00:96::15]:8001"): geo81,
	}
	waitFor(t, "the ClusterIPs", func() bool { return ir.is(want) })
	if got, _ := er.get(geoName); len(got) != 1 {
		t.Fatalf("endpoints %v: the ClusterIPs are no endpoints", got)
	}

	// A new ClusterIP (the Service recreated), one port's gone (IPv4
	// only now).
	ips = map[string][]netip.AddrPort{geoName: aps("10.96.0.99:8000"), geo81: aps("10.96.0.99:8001")}
	if _, err := s.SetServices(eps, ips); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the changed ClusterIPs", func() bool {
		return ir.is(map[netip.AddrPort]string{
			netip.MustParseAddrPort("10.96.0.99:8000"): geoName,
			netip.MustParseAddrPort("10.96.0.99:8001"): geo81,
		})
	})

	// The Service made headless (or a control plane that sends none):
	// no address is mapped any more.
	if _, err := s.SetEndpoints(eps); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "no ClusterIPs", func() bool { return ir.is(map[netip.AddrPort]string{}) })
}

// TestLoadAssignmentClusterIPs: the ClusterIPs are one named endpoint,
// the first family its address and the other its additional address,
// decoded back in order; a control plane's Service without them sends
// no named endpoint (the resource as before, byte for byte); an address
// no Service may have is not sent.
func TestLoadAssignmentClusterIPs(t *testing.T) {
	eps := []xdsclient.Endpoint{ep("10.244.0.7:8000", false)}
	cla := LoadAssignment(geoName, eps, aps("10.96.0.15:8000", "[fd00:96::15]:8000", "127.0.0.1:8000")...)
	vip := cla.GetNamedEndpoints()[xdsclient.ClusterIPName]
	if vip.GetAddress().GetSocketAddress().GetAddress() != "10.96.0.15" || len(vip.GetAdditionalAddresses()) != 1 ||
		vip.GetAdditionalAddresses()[0].GetAddress().GetSocketAddress().GetAddress() != "fd00:96::15" {
		t.Fatalf("named endpoint %v", vip)
	}
	plain, err := proto.Marshal(LoadAssignment(geoName, eps))
	if err != nil {
		t.Fatal(err)
	}
	with, err := proto.Marshal(cla)
	if err != nil {
		t.Fatal(err)
	}
	old := &endpointv3.ClusterLoadAssignment{}
	if err := proto.Unmarshal(with, old); err != nil {
		t.Fatal(err)
	}
	old.NamedEndpoints = nil
	if b, _ := proto.Marshal(old); string(b) != string(plain) {
		t.Fatal("the ClusterIPs changed more than named_endpoints")
	}
	if got, err := xdsclient.FromLoadAssignment(with); err != nil || len(got) != 1 {
		t.Fatalf("endpoints with ClusterIPs: %v %v", got, err)
	}
	t.Logf("ClusterIPs add %d bytes to a Service port (IPv4 and IPv6), %d with IPv4 alone",
		len(with)-len(plain), proto.Size(LoadAssignment(geoName, eps, aps("10.96.0.15:8000")...))-len(plain))
}

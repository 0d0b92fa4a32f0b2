package xdsclient

import (
	"maps"
	"net/netip"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/minimesh/minimesh/wellknown"
)

func sock(a string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: a, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

// withVIPs is a Service port's resource with named_endpoints[key]: the
// first address its address, the others additional ones.
func withVIPs(name, key string, port uint32, ips ...string) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	if len(ips) == 0 {
		return cla
	}
	e := &endpointv3.Endpoint{Address: sock(ips[0], port)}
	for _, ip := range ips[1:] {
		e.AdditionalAddresses = append(e.AdditionalAddresses, &endpointv3.Endpoint_AdditionalAddress{Address: sock(ip, port)})
	}
	cla.NamedEndpoints = map[string]*endpointv3.Endpoint{key: e}
	return cla
}

// TestDecodeClusterIPs: the ClusterIPs of every resource, both families,
// map to its name; another named endpoint, a resource without any, and
// addresses no Service may have map nothing; an address two resources
// claim maps to neither.
func TestDecodeClusterIPs(t *testing.T) {
	a := wellknown.EndpointName("a", "shop", 80)
	b := wellknown.EndpointName("b", "shop", 80)
	c := wellknown.EndpointName("c", "shop", 80)
	d := wellknown.EndpointName("d", "shop", 80)
	e := wellknown.EndpointName("e", "shop", 8080)
	f := wellknown.EndpointName("f", "shop", 80)
	_, ips, _, _, err := decodeEDS(res(anys(t,
		withVIPs(a, ClusterIPName, 80, "10.96.0.1", "fd00::1"),
		withVIPs(b, "other", 80, "10.96.0.2"),
		withVIPs(c, ClusterIPName, 80),
		withVIPs(d, ClusterIPName, 80, "10.96.0.9", "127.0.0.1"),
		withVIPs(e, ClusterIPName, 8080, "::ffff:10.96.0.5"),
		withVIPs(f, ClusterIPName, 80, "10.96.0.9"),
	)))
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.AddrPort]string{
		netip.MustParseAddrPort("10.96.0.1:80"):   a,
		netip.MustParseAddrPort("[fd00::1]:80"):   a,
		netip.MustParseAddrPort("10.96.0.5:8080"): e,
	}
	if !maps.Equal(ips, want) {
		t.Errorf("ClusterIPs %v, want %v", ips, want)
	}
}

// TestDecodeClusterIPsRefused: a ClusterIP that is not an IP literal,
// or on another port than the resource's, refuses the response as a
// bad endpoint address does.
func TestDecodeClusterIPsRefused(t *testing.T) {
	a := wellknown.EndpointName("a", "shop", 80)
	for _, cla := range []*endpointv3.ClusterLoadAssignment{
		withVIPs(a, ClusterIPName, 80, "a.example"),
		withVIPs(a, ClusterIPName, 8080, "10.96.0.1"),
		withVIPs(a, ClusterIPName, 80, "10.96.0.1", "fe80::1%eth0"),
	} {
		if _, _, _, _, err := decodeEDS(res(anys(t, cla))); err == nil || !strings.Contains(err.Error(), "cluster IP") {
			t.Errorf("%v: %v, want refused", cla, err)
		}
	}
}

// TestEndpointsBesideClusterIPs: the endpoints of a resource with
// ClusterIPs decode as without them; the ClusterIPs are none of them.
// (A sidecar that predates them skips named_endpoints, field 5, as any
// field it does not know.)
func TestEndpointsBesideClusterIPs(t *testing.T) {
	cla := withVIPs(wellknown.EndpointName("a", "shop", 80), ClusterIPName, 80, "10.96.0.1")
	cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{sockEP("10.244.0.1", 8080, corev3.HealthStatus_HEALTHY)}}}
	eps, err := FromLoadAssignment(marshal(t, cla))
	if err != nil || len(eps) != 1 || eps[0].Addr != netip.MustParseAddrPort("10.244.0.1:8080") {
		t.Fatalf("%v %v", eps, err)
	}
}

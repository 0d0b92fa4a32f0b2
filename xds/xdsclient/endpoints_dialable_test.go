package xdsclient

import (
	"net/netip"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
)

// TestEndpointsNotDialableLeftOut: addresses Kubernetes refuses in an
// endpoint (but that a hand-written EndpointSlice of an older cluster
// can carry) are left out of a Service's endpoints, and the response is
// still applied: the sidecar would dial them from inside the calling pod
// (its own loopback, the node's metadata server).
func TestEndpointsNotDialableLeftOut(t *testing.T) {
	bad := []string{
		"127.0.0.1", "127.1.2.3", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1",
		"169.254.169.254", "fe80::1", "224.0.0.1", "ff02::1", "255.255.255.255",
	}
	var lbs []*endpointv3.LbEndpoint
	for _, a := range bad {
		lbs = append(lbs, sockEP(a, 6379, corev3.HealthStatus_HEALTHY))
	}
	lbs = append(lbs, sockEP("10.0.0.1", 80, corev3.HealthStatus_HEALTHY), sockEP("2001:db8::1", 80, corev3.HealthStatus_HEALTHY))
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: geo, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}}
	eps, n, _, err := decodeEndpoints(res(anys(t, cla)))
	if err != nil {
		t.Fatalf("refused the whole response: %v", err)
	}
	want := []Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.1:80")}, {Addr: netip.MustParseAddrPort("[2001:db8::1]:80")}}
	if !slices.Equal(eps[geo], want) || n != len(want) {
		t.Fatalf("endpoints %v (%d), want %v", eps[geo], n, want)
	}
	for _, a := range bad {
		if Dialable(netip.MustParseAddr(a)) {
			t.Errorf("Dialable(%s) = true", a)
		}
	}
	for _, a := range []string{"10.0.0.1", "192.168.1.1", "100.64.0.1", "2001:db8::1", "fd00::1", "::ffff:10.0.0.1"} {
		if !Dialable(netip.MustParseAddr(a)) {
			t.Errorf("Dialable(%s) = false", a)
		}
	}
}

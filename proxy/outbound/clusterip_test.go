package outbound

import (
	"net/netip"
	"strconv"
	"testing"
)

// TestClusterIPAuthority: which Service a redirected request is for
// (vipTable.authority), by its original destination first.
func TestClusterIPAuthority(t *testing.T) {
	const reviews = "reviews.shop.svc.cluster.local:8080"
	vips := map[netip.AddrPort]string{
		netip.MustParseAddrPort("10.96.0.15:8080"):    reviews,
		netip.MustParseAddrPort("[fd00:96::15]:8080"): reviews,
		netip.MustParseAddrPort("10.96.0.20:80"):      "gateway.edge.svc.cluster.local:80",
		netip.MustParseAddrPort("10.96.0.15:8081"):    "reviews.shop.svc.cluster.local:8081",
	}
	e := newEndpoints()
	e.setClusterIPs(vips)
	v := e.vips.Load()
	for _, c := range []struct {
		why, orig, host, want string
	}{
		{"the ClusterIP names its Service, Host the same address", "10.96.0.15:8080", "10.96.0.15", reviews},
		{"the ClusterIP names its Service, whatever Host says", "10.96.0.15:8080", "elsewhere.example", reviews},
		{"the ClusterIP without Host", "10.96.0.15:8080", "", reviews},
		{"the IPv6 ClusterIP", "[fd00:96::15]:8080", "fd00:96::15", reviews},
		{"an IPv4-mapped original destination is the IPv4 ClusterIP", "[::ffff:10.96.0.15]:8080", "", reviews},
		{"the ClusterIP of another port of the Service", "10.96.0.15:8081", "reviews", "reviews.shop.svc.cluster.local:8081"},
		{"a gateway's ClusterIP names the gateway, not the Service Host names", "10.96.0.20:80", "reviews", "gateway.edge.svc.cluster.local:80"},
		{"Host names a Service with a ClusterIP, the app connected to a pod: the pod as it is", "10.244.0.7:8080", "reviews", "10.244.0.7:8080"},
		{"the same with the Service's full name", "10.244.0.7:8080", "Reviews.shop.svc.cluster.local.", "10.244.0.7:8080"},
		{"the same from another namespace's spelling", "10.244.0.7:8080", "reviews.shop", "10.244.0.7:8080"},
		{"the same with an IPv6 pod", "[fd00:244::7]:8080", "reviews", "[fd00:244::7]:8080"},
		{"Host names no Service (an external host): named by Host", "203.0.113.9:80", "api.example.com", "api.example.com:80"},
		{"Host names a Service on a port that has no ClusterIP: Host", "10.244.0.7:9999", "reviews", "reviews:9999"},
		{"Host names a Service without ClusterIPs (headless, left out): Host", "10.244.0.8:80", "headless", "headless:80"},
		{"no Host, no ClusterIP: the address", "10.244.0.7:8080", "", "10.244.0.7:8080"},
		{"a ClusterIP on a port no Service has: Host", "10.96.0.15:9999", "reviews", "reviews:9999"},
	} {
		orig := netip.MustParseAddrPort(c.orig)
		port := strconv.Itoa(int(orig.Port()))
		if got := v.authority(orig, orig.String(), c.host, port, "shop"); got != c.want {
			t.Errorf("%s: original %s, Host %q: %q, want %q", c.why, c.orig, c.host, got, c.want)
		}
	}
	// A control plane that sends no ClusterIPs (nil: none yet; empty: an
	// old one): the Host rule, as before.
	for _, v := range []*vipTable{nil, {}} {
		if got := v.authority(netip.MustParseAddrPort("10.244.0.7:8080"), "10.244.0.7:8080", "reviews", "8080", "shop"); got != "reviews:8080" {
			t.Errorf("without ClusterIPs: %q, want the Host rule's reviews:8080", got)
		}
	}
}

// TestEndpointKeyNoIPLiteral: an IP literal names no Service; an IPv6
// one (no dot) was taken for a Service name in the sidecar's namespace.
func TestEndpointKeyNoIPLiteral(t *testing.T) {
	for _, name := range []string{"[fd00::1]:8080", "10.0.0.1:80", "[::ffff:10.0.0.1]:80"} {
		if k, ok := endpointKey(name, "shop"); ok {
			t.Errorf("endpointKey(%q) = %q, want no Service", name, k)
		}
	}
	if k, ok := endpointKey("reviews:8080", "shop"); !ok || k != "reviews.shop.svc.cluster.local:8080" {
		t.Errorf("endpointKey(reviews:8080) = %q %v", k, ok)
	}
}

// TestClusterIPAuthorityAllocs: naming a request sent to a ClusterIP
// allocates nothing (the map's own string is handed out).
func TestClusterIPAuthorityAllocs(t *testing.T) {
	e := newEndpoints()
	e.setClusterIPs(map[netip.AddrPort]string{netip.MustParseAddrPort("10.96.0.15:8080"): "reviews.shop.svc.cluster.local:8080"})
	v := e.vips.Load()
	orig := netip.MustParseAddrPort("10.96.0.15:8080")
	if n := testing.AllocsPerRun(100, func() { _ = v.authority(orig, "10.96.0.15:8080", "10.96.0.15", "8080", "shop") }); n != 0 {
		t.Errorf("%v allocations per request", n)
	}
}

package outbound

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/minimesh/minimesh/proxy/balancer"
)

// TestNameByHost: only a request named by its Host (rule 3) asks whether
// its original destination is one of the Service's endpoints; one named by
// a ClusterIP, by its address, or without Host never does.
func TestNameByHost(t *testing.T) {
	e := newEndpoints()
	e.setClusterIPs(map[netip.AddrPort]string{netip.MustParseAddrPort("10.96.0.15:8080"): "reviews.shop.svc.cluster.local:8080"})
	for _, v := range []struct {
		name string
		v    *vipTable
	}{{"with ClusterIPs", e.vips.Load()}, {"without", nil}} {
		for _, c := range []struct {
			why, orig, host string
			byHost          bool
		}{
			{"a ClusterIP (rule 1)", "10.96.0.15:8080", "reviews", false},
			{"a pod of a Service with a ClusterIP (rule 2)", "10.244.0.7:8080", "reviews", false},
			{"a pod of a headless Service (rule 3)", "10.244.0.8:5432", "db", true},
			{"no Host", "10.244.0.8:5432", "", false},
		} {
			orig := netip.MustParseAddrPort(c.orig)
			_, byHost := v.v.name(orig, c.orig, c.host, strconv.Itoa(int(orig.Port())), "shop")
			want := c.byHost
			if v.v == nil && c.host != "" {
				want = true // rule 3 alone: every Host names
			}
			if byHost != want {
				t.Errorf("%s, %s: byHost %v, want %v", v.name, c.why, byHost, want)
			}
		}
	}
}

// TestPinned: the endpoint at the original destination, in the control
// plane's spelling (IPv4-mapped addresses unmapped), else none; and, when
// none, whether the original destination is of an address family none of
// the endpoints has (direct: the app chose that address). The control
// plane sends a dual-stack Service's endpoints in its primary family only
// (endpointctl), so each balancer here holds one family; without an
// allocation.
func TestPinned(t *testing.T) {
	v4 := []balancer.Target{{Addr: "10.244.0.8:5432"}, {Addr: "10.244.0.9:5432", Terminating: true}}
	v6 := []balancer.Target{{Addr: "[fd00:244::8]:5432"}, {Addr: "[fd00:244::9]:5432"}}
	for _, c := range []struct {
		name    string
		targets []balancer.Target
		orig    string
		want    string
		direct  bool
	}{
		{"IPv4 Service, its pod", v4, "10.244.0.8:5432", "10.244.0.8:5432", false},
		{"IPv4 Service, its pod IPv4-mapped", v4, "[::ffff:10.244.0.8]:5432", "10.244.0.8:5432", false},
		{"IPv4 Service, terminating pod: still the app's choice", v4, "10.244.0.9:5432", "10.244.0.9:5432", false},
		{"IPv4 Service, another port", v4, "10.244.0.8:5433", "", false},
		{"IPv4 Service, an IPv4 address none of its pods", v4, "10.96.0.15:5432", "", false},
		{"IPv4 Service, a pod's IPv6 address (dual-stack pod)", v4, "[fd00:244::8]:5432", "", true},
		{"IPv6 Service, its pod", v6, "[fd00:244::8]:5432", "[fd00:244::8]:5432", false},
		{"IPv6 Service, an IPv6 address none of its pods", v6, "[fd00:244::7]:5432", "", false},
		{"IPv6 Service, a pod's IPv4 address", v6, "10.244.0.8:5432", "", true},
		{"IPv6 Service, a pod's IPv4 address IPv4-mapped", v6, "[::ffff:10.244.0.8]:5432", "", true},
		{"endpoints by name: either family, balanced", []balancer.Target{{Addr: "db-0.example:5432"}}, "[fd00:244::8]:5432", "", false},
		{"no endpoints: the original destination, as ever", nil, "10.244.0.8:5432", "", true},
	} {
		lb := balancer.New(balancer.Config{}, nil)
		lb.Update(c.targets)
		orig := netip.MustParseAddrPort(c.orig)
		ep, direct := pinned(lb, orig, orig.String())
		got := ""
		if ep != nil {
			got = ep.Addr()
		}
		if got != c.want || direct != c.direct {
			t.Errorf("%s: pinned(%s) = %q, direct %v; want %q, direct %v", c.name, c.orig, got, direct, c.want, c.direct)
		}
	}
	if ep, direct := pinned(nil, netip.MustParseAddrPort("10.244.0.8:5432"), "10.244.0.8:5432"); ep != nil || direct {
		t.Errorf("pinned without a balancer: %v, direct %v", ep, direct)
	}
	lb := balancer.New(balancer.Config{}, nil)
	lb.Update(v4)
	for _, o := range []string{"10.244.0.8:5432", "[fd00:244::8]:5432", "10.244.0.7:5432"} {
		orig := netip.MustParseAddrPort(o)
		text := orig.String()
		if n := testing.AllocsPerRun(100, func() { _, _ = pinned(lb, orig, text) }); n != 0 {
			t.Errorf("%s: %v allocations per request", o, n)
		}
	}
}

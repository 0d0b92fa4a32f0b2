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
// plane's spelling (IPv4-mapped addresses unmapped), else none; without
// an allocation.
func TestPinned(t *testing.T) {
	lb := balancer.New(balancer.Config{}, nil)
	lb.Update([]balancer.Target{{Addr: "10.244.0.8:5432"}, {Addr: "[fd00:244::8]:5432"}, {Addr: "10.244.0.9:5432", Terminating: true}})
	for _, c := range []struct{ orig, want string }{
		{"10.244.0.8:5432", "10.244.0.8:5432"},
		{"[::ffff:10.244.0.8]:5432", "10.244.0.8:5432"},
		{"[fd00:244::8]:5432", "[fd00:244::8]:5432"},
		{"10.244.0.9:5432", "10.244.0.9:5432"}, // terminating: still the pod the app chose
		{"10.244.0.8:5433", ""},
		{"10.96.0.15:5432", ""},
	} {
		orig := netip.MustParseAddrPort(c.orig)
		ep := pinned(lb, orig, orig.String())
		got := ""
		if ep != nil {
			got = ep.Addr()
		}
		if got != c.want {
			t.Errorf("pinned(%s) = %q, want %q", c.orig, got, c.want)
		}
	}
	if ep := pinned(nil, netip.MustParseAddrPort("10.244.0.8:5432"), "10.244.0.8:5432"); ep != nil {
		t.Errorf("pinned without a balancer: %v", ep.Addr())
	}
	orig := netip.MustParseAddrPort("10.244.0.8:5432")
	if n := testing.AllocsPerRun(100, func() { _ = pinned(lb, orig, "10.244.0.8:5432") }); n != 0 {
		t.Errorf("%v allocations per request", n)
	}
}

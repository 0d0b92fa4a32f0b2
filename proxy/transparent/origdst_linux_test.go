//go:build linux

package transparent

import (
	"net"
	"net/netip"
	"testing"
)

// A link-local original destination takes the zone of the interface the
// connection came in on, from the accepted socket's addresses (conntrack
// has none, and fe80::… without one cannot be dialled); every other
// address is left as it is.
func TestZoned(t *testing.T) {
	tcp := func(s string, zone string) net.Addr {
		ap := netip.MustParseAddrPort(s)
		return &net.TCPAddr{IP: ap.Addr().AsSlice(), Port: int(ap.Port()), Zone: zone}
	}
	for _, tc := range []struct {
		name          string
		orig          string
		local, remote net.Addr
		want          string
	}{
		{"link-local, zone of the local address", "[fe80::2]:8080", tcp("[fe80::2]:15006", "mm0"), tcp("[fe80::1]:40000", "mm0"), "[fe80::2%mm0]:8080"},
		{"link-local, zone of the caller's address", "[fe80::2]:8080", tcp("[fd6d:6d00::2]:15006", ""), tcp("[fe80::1]:40000", "eth0"), "[fe80::2%eth0]:8080"},
		{"link-local, no zone known", "[fe80::2]:8080", tcp("[fd6d:6d00::2]:15006", ""), tcp("[fd6d:6d00::1]:40000", ""), "[fe80::2]:8080"},
		{"global IPv6", "[fd6d:6d00::2]:8080", tcp("[fe80::2]:15006", "mm0"), tcp("[fe80::1]:40000", "mm0"), "[fd6d:6d00::2]:8080"},
		{"IPv4 link-local has no zones", "169.254.1.2:80", tcp("[fe80::2]:15006", "mm0"), tcp("[fe80::1]:40000", "mm0"), "169.254.1.2:80"},
		{"not TCP addresses", "[fe80::2]:8080", &net.UnixAddr{Name: "x"}, nil, "[fe80::2]:8080"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := zoned(netip.MustParseAddrPort(tc.orig), tc.local, tc.remote); got.String() != tc.want {
				t.Errorf("zoned = %s, want %s", got, tc.want)
			}
		})
	}
}

// A connection made to the listener's own link-local address is still the
// listener's own once its original destination has a zone.
func TestIsSelfZoned(t *testing.T) {
	local := &net.TCPAddr{IP: netip.MustParseAddr("fe80::2").AsSlice(), Port: 15006, Zone: "mm0"}
	for _, tc := range []struct {
		orig string
		want bool
	}{
		{"[fe80::2%mm0]:15006", true},
		{"[fe80::2]:15006", true},
		{"[fe80::2%mm0]:8080", false},
		{"[fe80::3%mm0]:15006", false},
	} {
		if got := isSelf(netip.MustParseAddrPort(tc.orig), local); got != tc.want {
			t.Errorf("isSelf(%s, %s) = %v, want %v", tc.orig, local, got, tc.want)
		}
	}
}

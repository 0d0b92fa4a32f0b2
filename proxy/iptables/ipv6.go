package iptables

import (
	"fmt"
	"net"
	"net/netip"
)

// HasIPv6 reports whether the network namespace it runs in has an IPv6
// address an app could use beyond the pod: one that is neither loopback
// nor link-local. It is what --ipv6 auto decides by; the address found is
// returned for the log.
func HasIPv6() (bool, string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false, "", fmt.Errorf("listing the addresses of this network namespace: %w", err)
	}
	for _, a := range addrs {
		if ok, s := usableIPv6(a); ok {
			return true, s, nil
		}
	}
	return false, "", nil
}

func usableIPv6(a net.Addr) (bool, string) {
	n, ok := a.(*net.IPNet)
	if !ok {
		return false, ""
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok || !ip.Is6() || ip.Is4In6() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() {
		return false, ""
	}
	return true, ip.String()
}

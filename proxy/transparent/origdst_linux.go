//go:build linux

package transparent

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The getsockopt options of netfilter's NAT that return a redirected
// connection's destination before the REDIRECT: SO_ORIGINAL_DST at level
// SOL_IP (linux/netfilter_ipv4.h) and IP6T_SO_ORIGINAL_DST at level
// SOL_IPV6 (linux/netfilter_ipv6/ip6_tables.h); both are 80.
const (
	soOriginalDst     = unix.SO_ORIGINAL_DST
	ip6tSoOriginalDst = 80
)

// OriginalDst returns the destination a connection had before an iptables
// REDIRECT (or DNAT) sent it to the listener, from conntrack. A connection
// conntrack knows nothing of (no NAT rule, no conntrack in the namespace)
// returns an error: it was made to the listener itself.
//
// It is one getsockopt(2) per accepted connection.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	v6 := false
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok && la.IP.To4() == nil {
		v6 = true
	}
	var ap netip.AddrPort
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		if v6 {
			ap, serr = original6(int(fd))
			return
		}
		ap, serr = original4(int(fd))
	})
	if cerr != nil {
		return netip.AddrPort{}, cerr
	}
	if serr != nil {
		return netip.AddrPort{}, serr
	}
	return zoned(ap, c.LocalAddr(), c.RemoteAddr()), nil
}

// zoned gives an IPv6 link-local original destination the zone of the
// interface the connection came in on. conntrack keeps addresses without
// their interface, and a link-local address means nothing without one:
// dialled as it came, fe80::… failed with EINVAL, and a caller of the
// pod's link-local address got the inbound listener's 502. The accepted
// socket knows the interface: the kernel binds it to the one the SYN came
// in on when the caller's address is link-local, as a caller's source is
// for a link-local destination (RFC 6724's scope rule), and Go names it as
// the zone of the socket's link-local addresses. Any other address is
// returned as it is, at no cost.
func zoned(ap netip.AddrPort, local, remote net.Addr) netip.AddrPort {
	a := ap.Addr()
	if !a.Is6() || !a.IsLinkLocalUnicast() || a.Zone() != "" {
		return ap
	}
	for _, end := range [...]net.Addr{local, remote} {
		if ta, ok := end.(*net.TCPAddr); ok && ta.Zone != "" {
			return netip.AddrPortFrom(a.WithZone(ta.Zone), ap.Port())
		}
	}
	return ap // a caller that chose a wider source: left for the dial to refuse
}

// original4 reads a struct sockaddr_in. x/sys has no getter of that size;
// IPv6Mreq (20 bytes) holds it whole, as the kernel wants at least 16.
func original4(fd int) (netip.AddrPort, error) {
	m, err := unix.GetsockoptIPv6Mreq(fd, unix.SOL_IP, soOriginalDst)
	if err != nil {
		return netip.AddrPort{}, err
	}
	b := m.Multiaddr // family (2), port (2, big-endian), address (4), zero (8)
	port := uint16(b[2])<<8 | uint16(b[3])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
}

// original6 reads a struct sockaddr_in6 through IPv6MTUInfo, whose first
// field is one. An IPv4 connection on a dual-stack socket has no IPv6
// entry in conntrack: it falls back to SO_ORIGINAL_DST.
func original6(fd int) (netip.AddrPort, error) {
	info, err := unix.GetsockoptIPv6MTUInfo(fd, unix.SOL_IPV6, ip6tSoOriginalDst)
	if err != nil {
		if ap, err4 := original4(fd); err4 == nil {
			return ap, nil
		}
		return netip.AddrPort{}, err
	}
	p := (*[2]byte)(unsafe.Pointer(&info.Addr.Port))
	port := uint16(p[0])<<8 | uint16(p[1])
	return netip.AddrPortFrom(netip.AddrFrom16(info.Addr.Addr).Unmap(), port), nil
}

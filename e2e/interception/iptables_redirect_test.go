package interception_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/minimesh/minimesh/wellknown"
)

// The addresses of the two namespaces: a pod and a peer joined by a veth
// pair (test networks from 198.18.0.0/15, off the one-node cluster's
// 198.18.240.0/24 and 198.19.240.0/24; ULA for IPv6).
var (
	podV4     = netip.MustParseAddr("198.18.250.2")
	peerV4    = netip.MustParseAddr("198.18.250.1")
	skippedV4 = netip.MustParseAddr("198.18.250.7") // the peer's too, in --skip-outbound-cidrs
	podV6     = netip.MustParseAddr("fd6d:6d00::2")
	peerV6    = netip.MustParseAddr("fd6d:6d00::1")
)

// newPodAndPeer makes the pod and peer namespaces and joins them.
func newPodAndPeer(t *testing.T) (pod, peer *netns) {
	t.Helper()
	pod, peer = newNetns(t), newNetns(t)
	run(t, "ip", "-n", pod.name, "link", "add", "mm0", "type", "veth", "peer", "name", "mm1", "netns", peer.name)
	for _, a := range []struct {
		ns   *netns
		dev  string
		addr string
	}{
		{pod, "mm0", podV4.String() + "/24"},
		{pod, "mm0", podV6.String() + "/64"},
		{peer, "mm1", peerV4.String() + "/24"},
		{peer, "mm1", skippedV4.String() + "/24"},
		{peer, "mm1", peerV6.String() + "/64"},
	} {
		args := []string{"-n", a.ns.name, "addr", "add", a.addr, "dev", a.dev}
		if netip.MustParsePrefix(a.addr).Addr().Is6() {
			args = append(args, "nodad")
		}
		run(t, "ip", args...)
	}
	run(t, "ip", "-n", pod.name, "link", "set", "mm0", "up")
	run(t, "ip", "-n", peer.name, "link", "set", "mm1", "up")
	// A pod's default route: a destination needs a route before the nat
	// table sees its first packet.
	run(t, "ip", "-n", pod.name, "route", "add", "default", "via", peerV4.String())
	run(t, "ip", "-n", pod.name, "-6", "route", "add", "default", "via", peerV6.String())
	return pod, peer
}

// The rules at work, for each back-end: the pod's TCP goes to the
// outbound port with its original destination readable, except the
// sidecar's UID (no loop), loopback and the pod's own address, skipped
// ports and CIDRs; TCP into the pod goes to the inbound port except the
// sidecar's own ports and skipped ones; UDP goes where it was sent. Each
// check waits for the connection where it must arrive: a connection that
// went elsewhere fails it by its token or by the wait.
func TestIptablesRedirect(t *testing.T) {
	bin := needIPTables(t)
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			pod, peer := newPodAndPeer(t)
			pod.minimeshInit(t, bin, "--backend", be, "--ipv6", "auto", "--capture-inbound",
				"--skip-outbound-ports", "5432", "--skip-outbound-cidrs", skippedV4.String()+"/32",
				"--skip-inbound-ports", "9090")

			port := func(p int) string { return fmt.Sprint(p) }
			outbound4 := pod.listen(t, "127.0.0.1:"+port(wellknown.OutboundPort))
			outbound6 := pod.listen(t, "[::1]:"+port(wellknown.OutboundPort))
			inbound := pod.listen(t, ":"+port(wellknown.InboundPort))
			admin := pod.listen(t, ":"+port(wellknown.AdminPort))
			app := pod.listen(t, ":8080")
			appSkipped := pod.listen(t, ":9090")
			upstream := peer.listen(t, ":80")
			postgres := peer.listen(t, ":5432")

			t.Run("outbound redirected", func(t *testing.T) {
				for _, tc := range []struct {
					ln  net.Listener
					dst netip.AddrPort
				}{
					{outbound4, netip.AddrPortFrom(peerV4, 80)},
					{outbound6, netip.AddrPortFrom(peerV6, 80)},
					// Nothing listens there: redirected all the same.
					{outbound4, netip.AddrPortFrom(netip.MustParseAddr("198.18.251.9"), 443)},
				} {
					token := "app→" + tc.dst.String()
					pod.dial(t, tc.dst.String(), token)
					c := accept(t, tc.ln, token)
					if got := originalDst(t, c); got != tc.dst {
						t.Errorf("original destination %s, want %s", got, tc.dst)
					}
				}
			})

			t.Run("the sidecar's UID is not redirected", func(t *testing.T) {
				for _, ip := range []netip.Addr{peerV4, peerV6} {
					token := fmt.Sprintf("uid%d→%s", wellknown.ProxyUID, ip)
					pod.dialAs(t, wellknown.ProxyUID, ip, 80, token)
					c := accept(t, upstream, token)
					if got := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != podV4 && got != podV6 {
						t.Errorf("came from %s, want the pod", got)
					}
				}
			})

			t.Run("skipped port and CIDR", func(t *testing.T) {
				pod.dial(t, netip.AddrPortFrom(peerV4, 5432).String(), "to postgres")
				accept(t, postgres, "to postgres")
				pod.dial(t, netip.AddrPortFrom(skippedV4, 80).String(), "to a skipped CIDR")
				c := accept(t, upstream, "to a skipped CIDR")
				if got := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != skippedV4 {
					t.Errorf("arrived at %s, want %s", got, skippedV4)
				}
			})

			t.Run("loopback and the pod's own addresses", func(t *testing.T) {
				for _, dst := range []string{"127.0.0.1:8080", "[::1]:8080", netip.AddrPortFrom(podV4, 8080).String(), netip.AddrPortFrom(podV6, 8080).String()} {
					token := "self→" + dst
					pod.dial(t, dst, token)
					accept(t, app, token)
				}
			})

			t.Run("inbound redirected", func(t *testing.T) {
				for _, dst := range []netip.AddrPort{netip.AddrPortFrom(podV4, 8080), netip.AddrPortFrom(podV6, 8080)} {
					token := "peer→" + dst.String()
					peer.dial(t, dst.String(), token)
					c := accept(t, inbound, token)
					if got := originalDst(t, c); got != dst {
						t.Errorf("original destination %s, want %s", got, dst)
					}
				}
			})

			t.Run("inbound to the sidecar's ports and skipped ports", func(t *testing.T) {
				for _, tc := range []struct {
					ln  net.Listener
					dst netip.AddrPort
				}{
					{admin, netip.AddrPortFrom(podV4, wellknown.AdminPort)},
					{admin, netip.AddrPortFrom(podV6, wellknown.AdminPort)},
					{appSkipped, netip.AddrPortFrom(podV4, 9090)},
					{inbound, netip.AddrPortFrom(podV4, wellknown.InboundPort)},
				} {
					token := "peer→" + tc.dst.String()
					peer.dial(t, tc.dst.String(), token)
					accept(t, tc.ln, token)
				}
			})

			t.Run("UDP untouched", func(t *testing.T) {
				var pc net.PacketConn
				peer.do(t, func() (err error) {
					pc, err = net.ListenPacket("udp", ":53")
					return err
				})
				defer pc.Close()
				pod.sendUDP(t, netip.AddrPortFrom(peerV4, 53).String(), "dns?")
				pc.SetReadDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 16)
				n, from, err := pc.ReadFrom(buf)
				if err != nil || string(buf[:n]) != "dns?" {
					t.Fatalf("the peer's UDP :53 read %q from %v: %v", buf[:n], from, err)
				}
			})
		})
	}
}

package interception_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A host behind the pod, on a second link of the pod's (the probe of an
// open relay: an attacker routes the host's network through the pod).
var (
	podSecondV4 = netip.MustParseAddr("198.18.251.1")
	extV4       = netip.MustParseAddr("198.18.251.2")
	podSecondV6 = netip.MustParseAddr("fd6d:6d01::1")
	extV6       = netip.MustParseAddr("fd6d:6d01::2")
)

// TestInboundForeignDestination: with inbound capture on, a connection
// the peer routes through the pod to another host is never relayed there.
// The rules return it before the REDIRECT (the pod does not forward: the
// kernel drops it), and the sidecar, should rules without that match
// redirect it anyway, resets it and counts it forbidden with
// destination="other". The pod's own addresses, its secondary one
// included, still reach the app through the sidecar.
func TestInboundForeignDestination(t *testing.T) {
	p := newInboundPod(t, 100)
	ext := newNetns(t)
	run(t, "ip", "-n", p.pod.name, "link", "add", "mm2", "type", "veth", "peer", "name", "mm3", "netns", ext.name)
	for _, a := range []struct {
		ns   *netns
		dev  string
		addr string
	}{
		{p.pod, "mm2", podSecondV4.String() + "/24"},
		{p.pod, "mm2", podSecondV6.String() + "/64"},
		{ext, "mm3", extV4.String() + "/24"},
		{ext, "mm3", extV6.String() + "/64"},
	} {
		args := []string{"-n", a.ns.name, "addr", "add", a.addr, "dev", a.dev}
		if netip.MustParsePrefix(a.addr).Addr().Is6() {
			args = append(args, "nodad")
		}
		run(t, "ip", args...)
	}
	run(t, "ip", "-n", p.pod.name, "link", "set", "mm2", "up")
	run(t, "ip", "-n", ext.name, "link", "set", "mm3", "up")
	run(t, "ip", "-n", ext.name, "route", "add", "default", "via", podSecondV4.String())
	run(t, "ip", "-n", ext.name, "-6", "route", "add", "default", "via", podSecondV6.String())
	// The attacker's routes: the host's network through the pod.
	run(t, "ip", "-n", p.peer.name, "route", "add", "198.18.251.0/24", "via", podV4.String())
	run(t, "ip", "-n", p.peer.name, "-6", "route", "add", "fd6d:6d01::/64", "via", podV6.String())
	// A pod is no router (the probe's set-up; a new namespace's default).
	p.pod.exec(t, "bash", "-c", "echo 0 >/proc/sys/net/ipv4/ip_forward && echo 0 >/proc/sys/net/ipv6/conf/all/forwarding")

	// The host behind the pod: an HTTP server and a greeting on a port of
	// the default opaque list; every connection it accepts is counted.
	var extSaw atomic.Int64
	for _, port := range []string{"8088", "6379"} {
		ln := ext.listen(t, "[::]:"+port)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				extSaw.Add(1)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\next\n")
				c.Close()
			}
		}()
	}
	// The host is up: reachable from the pod itself.
	p.pod.do(t, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(extV4, 8088).String(), 5*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	for deadline := time.Now().Add(10 * time.Second); extSaw.Load() != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the host behind the pod never saw the pod's own connection")
		}
	}
	extSaw.Store(0)

	foreign := []netip.AddrPort{
		netip.AddrPortFrom(extV4, 8088), netip.AddrPortFrom(extV4, 6379),
		netip.AddrPortFrom(extV6, 8088), netip.AddrPortFrom(extV6, 6379),
	}

	// The rules: the pod does not forward, so the attacker's connect
	// fails (IPv4: the kernel's host unreachable; IPv6: dropped, the
	// connect's own timeout). A connect that succeeded was the sidecar's.
	for _, dst := range foreign {
		var c net.Conn
		err := inNetns(p.peer.name, func() (err error) {
			c, err = net.DialTimeout("tcp", dst.String(), 3*time.Second)
			return err
		})
		if err == nil {
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", dst)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			b, _ := io.ReadAll(c)
			c.Close()
			t.Errorf("the peer connected to %s through the pod; it read %q", dst, b)
		}
	}
	if n := extSaw.Load(); n != 0 {
		t.Errorf("the host behind the pod saw %d connections from the peer", n)
	}

	// The sidecar, with rules that redirect everything (another CNI
	// plugin's, or minimesh's before the fix): the connection is
	// accepted, then reset without a dial.
	deleted := 0
	for _, prog := range []string{"iptables-legacy", "iptables-nft", "ip6tables-legacy", "ip6tables-nft"} {
		if _, err := p.pod.execErr(t, prog, "-w", "-t", "nat", "-D", "MINIMESH_INBOUND", "-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", "RETURN"); err == nil {
			deleted++
		}
	}
	if deleted != 2 {
		t.Fatalf("deleted the local-destination rule %d times, want 2 (IPv4 and IPv6):\n%s", deleted, p.pod.saveAll(t))
	}
	for _, dst := range foreign {
		c, err := p.dial(dst.String())
		if reset(err) {
			continue // the reset of an opaque port's relay can beat connect's own return
		}
		if err != nil {
			t.Errorf("with everything redirected, connecting to %s: %v (want the sidecar's accept, then a reset)", dst, err)
			continue
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, werr := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", dst)
		b, rerr := io.ReadAll(c)
		c.Close()
		if len(b) > 0 || !reset(werr) && !reset(rerr) {
			t.Errorf("%s through the sidecar: read %q (%v, %v); want a reset and nothing else", dst, b, werr, rerr)
		}
	}
	// Counted before the reset: the count is final once every reset was
	// seen, and nothing refused was dialled.
	p.waitMetric(t, `minimesh_tcp_connections_total{destination="other",direction="inbound",result="forbidden"}`, float64(len(foreign)))
	if n := extSaw.Load(); n != 0 {
		t.Errorf("the host behind the pod saw %d connections relayed by the sidecar", n)
	}
	if out := p.sidecar.Output(); !strings.Contains(out, "not one of the pod's addresses") {
		t.Errorf("no log line of the refusal:\n%s", grepLines(out, "refused"))
	}

	// The pod's own addresses still reach the app through the sidecar:
	// its IP from the peer, both families, and its secondary address from
	// the host behind it.
	for _, url := range []string{
		fmt.Sprintf("http://%s:8080/own-v4", podV4),
		fmt.Sprintf("http://[%s]:8090/own-v6", podV6),
	} {
		resp, err := p.get(url, nil)
		if err != nil {
			t.Errorf("%s: %v", url, err)
			continue
		}
		resp.Body.Close()
	}
	for _, path := range []string{"/own-v4", "/own-v6"} {
		if got := p.appSaw(path); got.path != path {
			t.Errorf("the app saw %+v, want %s", got, path)
		}
	}
	var c net.Conn
	ext.do(t, func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(podSecondV4, 7070).String(), 5*time.Second)
		return err
	})
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "second\n")
	if got, err := bufio.NewReader(c).ReadString('\n'); err != nil || got != "echo: second\n" {
		t.Errorf("the pod's secondary address: %q, %v", got, err)
	}
	if n := p.metric(`minimesh_tcp_connections_total{destination="7070",direction="inbound",result="forbidden"}`); n != 0 {
		t.Errorf("the pod's secondary address was refused %v times", n)
	}
}

package outbound

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestOwnConnsFromDialToClose: the dialer records each upstream
// connection's local address from its dial to its Close, the record a
// redirected connection is looked up in (RefuseLoop); a second Close of a
// connection whose port was given since to another leaves the other's.
func TestOwnConnsFromDialToClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := newDialer(time.Second, nil, newSelfAddrs())
	c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	dst := netip.MustParseAddrPort(ln.Addr().String())
	if !d.own.has(local, dst) || !d.own.has(netip.AddrPortFrom(netip.AddrFrom16(local.Addr().As16()), local.Port()), dst) {
		t.Fatalf("the dialled connection from %s is not recorded (nor as an IPv4-mapped address)", local)
	}
	// Linux gives the same ephemeral port to connections to different
	// destinations, the app's included: one from this port to elsewhere
	// is not the sidecar's.
	if d.own.has(local, netip.AddrPortFrom(dst.Addr(), dst.Port()+1)) {
		t.Fatalf("a connection from %s to another destination is taken for the sidecar's own", local)
	}
	// Its raw reads, half-close and reset are reached through the record.
	if _, ok := c.(interface{ CloseWrite() error }); !ok {
		t.Error("the dialled connection has no CloseWrite: a relay would close it at the app's half-close")
	}
	c.Close()
	if d.own.has(local, dst) {
		t.Fatalf("%s is still recorded after its Close", local)
	}

	// The port given to a new connection of the sidecar's: the old one's
	// second Close leaves it recorded.
	oc := c.(*ownConn)
	next := &ownConn{key: connKey{local, dst}, own: &d.own}
	d.own.mu.Lock()
	d.own.m[next.key] = next
	d.own.mu.Unlock()
	oc.Close()
	if !d.own.has(local, dst) {
		t.Errorf("a second Close of an old connection forgot the new one on %s", local)
	}
}

// TestOwnConnsBeforeTheDialReturns: a connection comes back to the
// listener as soon as its handshake is over, which may be before its
// dial has returned and recorded it: the socket of a dial under way is
// asked its address, so that the loop is refused at its first return
// however the two goroutines are scheduled; once the dial has failed it
// is nobody's.
func TestOwnConnsBeforeTheDialReturns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	d := newDialer(time.Second, nil, newSelfAddrs())
	var during, other bool
	var from netip.AddrPort
	d.connect = func(ctx context.Context, nd *net.Dialer, network, addr string) (net.Conn, error) {
		c, err := nd.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		back, err := ln.Accept() // the connection come back, its dial not returned
		if err != nil {
			t.Fatal(err)
		}
		back.Close()
		from = netip.MustParseAddrPort(back.RemoteAddr().String())
		during = d.own.has(from, dst)
		other = d.own.has(from, netip.AddrPortFrom(dst.Addr(), dst.Port()+1))
		c.Close()
		return nil, errors.New("the test's")
	}
	if _, err := d.DialContext(context.Background(), "tcp", dst.String()); err == nil {
		t.Fatal("the dial succeeded")
	}
	if !during {
		t.Errorf("the connection from %s, its dial under way, was not known as the sidecar's", from)
	}
	if other {
		t.Errorf("the connection from %s was known as a dial to another address", from)
	}
	if d.own.has(from, dst) {
		t.Errorf("%s is still known after its dial failed", from)
	}
	d.own.mu.Lock()
	n := len(d.own.pending)
	d.own.mu.Unlock()
	if n != 0 {
		t.Errorf("%d addresses still have dials under way", n)
	}
}

// TestLoopLogEvery: the loop's error line is written once per
// loopLogEvery, with the count of loops since the start.
func TestLoopLogEvery(t *testing.T) {
	var o ownConns
	t0 := time.Unix(1_000_000, 0)
	for _, tc := range []struct {
		at    time.Duration
		n     uint64
		logIt bool
	}{
		{0, 1, true},
		{time.Second, 2, false},
		{loopLogEvery - time.Nanosecond, 3, false},
		{loopLogEvery, 4, true},
		{loopLogEvery + time.Second, 5, false},
		{3 * loopLogEvery, 6, true},
	} {
		if n, due := o.loop(t0.Add(tc.at)); n != tc.n || due != tc.logIt {
			t.Errorf("loop at %v: count %d, logged %v; want %d, %v", tc.at, n, due, tc.n, tc.logIt)
		}
	}
}

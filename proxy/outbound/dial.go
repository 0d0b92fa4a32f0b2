package outbound

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/internal/rawio"
)

// dialer makes upstream connections and tags their failures as
// connect-failure, the one failure after which any method may be retried.
//
// It is also where the sidecar refuses to connect to itself. Names are
// checked where they have become addresses, in the dialer's Control hook,
// after DNS, /etc/hosts and --resolve have had their say: "LOCALHOST",
// "localhost.", an alias, a name whose record is 127.0.0.1, "[::1]" and
// "0" all arrive there as the same IP and port, so no spelling of the
// sidecar's own address gets through (docs/operations.md, "Limits and
// failure behaviour").
type dialer struct {
	d net.Dialer
	// resolve maps host:port to the address to dial instead, like curl's
	// --resolve: for local development, where the app must name a service
	// that has no DNS entry.
	resolve map[string]string
	self    *selfAddrs
}

func newDialer(connectTimeout time.Duration, resolve map[string]string, self *selfAddrs) *dialer {
	return &dialer{d: net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}, resolve: resolve, self: self}
}

func (d *dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	asked := addr
	if to, ok := d.resolve[strings.ToLower(addr)]; ok { // keys are lower case
		addr = to
	}
	// The listener the request arrived on is the sidecar's own too, even
	// when nobody declared it (a handler served by a test server).
	arrived, _ := ctx.Value(http.LocalAddrContextKey).(net.Addr)
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if h := strings.TrimSuffix(strings.ToLower(host), "."); h == "0" || h == "localhost" || strings.HasSuffix(h, ".localhost") {
			ip := "127.0.0.1"
			if h == "0" {
				ip = "0.0.0.0"
			}
			if ap, err := netip.ParseAddrPort(net.JoinHostPort(ip, port)); err == nil && d.self.has(ap, arrived) {
				return nil, &selfError{addr: ap.String(), asked: asked}
			}
		}
	}
	nd := d.d
	nd.ControlContext = func(_ context.Context, _, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return nil // not an IP address: not one of ours
		}
		if d.self.has(ap, arrived) {
			return &selfError{addr: address}
		}
		return nil
	}
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		var se *selfError
		if errors.As(err, &se) {
			se.asked = asked
			return nil, se
		}
		return nil, &dialError{err}
	}
	return rawio.Wrap(c), nil
}

// selfError is a connection refused because it would reach one of the
// sidecar's own listeners: a loop, or a way around the admin port's
// loopback-only rule for anyone who can make the app send a request.
type selfError struct{ addr, asked string }

func (e *selfError) Error() string {
	if e.asked != "" && e.asked != e.addr {
		return e.asked + " is the sidecar's own address " + e.addr + ": nothing sent through the sidecar may reach its own ports"
	}
	return e.addr + " is the sidecar's own address: nothing sent through the sidecar may reach its own ports"
}

// selfAddrs is what counts as the sidecar itself: its listeners' ports on
// any address of this host (loopback, unspecified, the pod's own IPs), since
// a listener on :15020 answers on every one of them.
type selfAddrs struct {
	mu    sync.RWMutex
	ports []uint16
	local []netip.Addr // this host's interface addresses, read once
}

func newSelfAddrs() *selfAddrs {
	s := &selfAddrs{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				s.local = append(s.local, p.Addr().Unmap())
			}
		}
	}
	return s
}

// add declares a listener of the sidecar's.
func (s *selfAddrs) add(addr net.Addr) {
	_, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return
	}
	s.mu.Lock()
	s.ports = append(s.ports, uint16(p))
	s.mu.Unlock()
}

// has reports whether ap reaches one of the sidecar's listeners, arrived
// (the listener of the request at hand, may be nil) included. It runs once
// per new upstream connection, not per request.
func (s *selfAddrs) has(ap netip.AddrPort, arrived net.Addr) bool {
	ip := ap.Addr().Unmap()
	if !s.isLocal(ip) {
		return false
	}
	port := ap.Port()
	if arrived != nil {
		if a, err := netip.ParseAddrPort(arrived.String()); err == nil && a.Port() == port {
			return true
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, p := range s.ports {
		if p == port {
			return true
		}
	}
	return false
}

func (s *selfAddrs) isLocal(ip netip.Addr) bool {
	if ip.IsLoopback() || ip.IsUnspecified() {
		return true
	}
	for _, l := range s.local {
		if l == ip {
			return true
		}
	}
	return false
}

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
		ap, err := controlAddr(address)
		if err != nil {
			// Every TCP dial has an IP address here: one that cannot be
			// read is refused, never let through unchecked.
			return &selfError{addr: address, unread: true}
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

// controlAddr reads the address a dial's Control hook is given. Go
// writes an IPv4 address the app spelled with a zone
// ("[::ffff:127.0.0.1%25lo]") as "127.0.0.1%lo:15020", which netip does
// not parse: the zone is dropped here, as the kernel ignores it for IPv4.
// An IPv6 address keeps its zone (it picks a link-local address's
// interface).
func controlAddr(address string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		h, zone, ok := strings.Cut(host, "%")
		if !ok {
			return netip.AddrPort{}, err
		}
		if ip, err = netip.ParseAddr(h); err != nil {
			return netip.AddrPort{}, err
		}
		if ip.Is6() {
			ip = ip.WithZone(zone)
		}
	}
	return netip.AddrPortFrom(ip, uint16(p)), nil
}

// selfError is a connection refused because it would reach one of the
// sidecar's own listeners: a loop, or a way around the admin port's
// loopback-only rule for anyone who can make the app send a request.
// unread: the dial's address could not be read, so not checked.
type selfError struct {
	addr, asked string
	unread      bool
}

func (e *selfError) Error() string {
	if e.unread {
		return "cannot tell whether " + e.addr + " is the sidecar's own address: not dialled"
	}
	if e.asked != "" && e.asked != e.addr {
		return e.asked + " is the sidecar's own address " + e.addr + ": nothing sent through the sidecar may reach its own ports"
	}
	return e.addr + " is the sidecar's own address: nothing sent through the sidecar may reach its own ports"
}

// endpointSelf is err, unless err refused a connection to the sidecar's
// own address: then it is a connect failure of the try's endpoint. The
// balancer picked that address from the control plane's endpoints
// (docs/controlplane.md, "Endpoints (EDS)": a Service whose targetPort
// is one of the sidecar's ports, an EndpointSlice written by hand), not
// the app: answered as the app's forbidden request (403), one try in
// every few of a healthy Service failed, never retried on another
// endpoint, and the endpoint, whose refusals were ignored, never
// ejected. As a connect failure it is retried elsewhere whatever the
// method (nothing was sent), counts toward the endpoint's ejection and
// the breaker as failOn says (docs/policy.md), and is still never
// dialled.
func endpointSelf(err error) error {
	var se *selfError
	if !errors.As(err, &se) {
		return err
	}
	return &dialError{&selfEndpointError{addr: se.addr}}
}

// selfEndpointError is an endpoint of the control plane's that is the
// sidecar's own address; deliberately not a *selfError, which answers 403.
type selfEndpointError struct{ addr string }

func (e *selfEndpointError) Error() string {
	return "endpoint " + e.addr + " is the sidecar's own address: not dialled (the control plane's endpoints of the Service name it)"
}

// selfAddrs is what counts as the sidecar itself: its listeners' ports on
// any address of this host (loopback, unspecified, the pod's own IPs), since
// a listener on :15020 answers on every one of them.
type selfAddrs struct {
	mu    sync.RWMutex
	ports []uint16
}

func newSelfAddrs() *selfAddrs { return &selfAddrs{} }

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
// per new upstream connection, not per request; the port is looked at
// first, so only a dial to one of the sidecar's port numbers asks whether
// its address is this host's (isLocal).
func (s *selfAddrs) has(ap netip.AddrPort, arrived net.Addr) bool {
	if !s.ours(ap.Port(), arrived) {
		return false
	}
	return isLocal(ap.Addr())
}

func (s *selfAddrs) ours(port uint16, arrived net.Addr) bool {
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

// isLocal reports whether a connection to ip ends on this host (the pod's
// network namespace). Loopback and the unspecified address do, in every
// spelling: a zone is ignored (the kernel ignores it but for a link-local
// address) and an IPv4-mapped address is its IPv4 one. For any other
// address the kernel answers: only an address of this host can be bound,
// whether it was assigned before the sidecar started or after, or is
// local by a route (ip route add local ...). A list read at start would
// miss the addresses added since.
func isLocal(ip netip.Addr) bool {
	zone := ip.Zone()
	ip = ip.Unmap().WithZone("")
	if ip.IsLoopback() || ip.IsUnspecified() {
		return true
	}
	if ip.Is6() && ip.IsLinkLocalUnicast() {
		ip = ip.WithZone(zone) // which interface's
	}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

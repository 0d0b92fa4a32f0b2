package outbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/internal/netconn"
	"github.com/minimesh/minimesh/internal/rawio"
	"github.com/minimesh/minimesh/internal/replayguard"
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

	// pools are the kept connections to IP addresses, made for the
	// transports that keep them (pooled): retire finds there those to an
	// endpoint that has left every Service's endpoints.
	pools connPools
	// own are the addresses of the upstream connections open, for
	// the redirected listener to refuse one of them come back (ownConns).
	own ownConns

	// log hears of dials that failed for want of the sidecar's own
	// resources (starved), at most once per starvedLogEvery, with
	// their count since the start; nil: slog's default.
	log         *slog.Logger
	starved     atomic.Uint64
	starvedNext atomic.Int64 // unix nanoseconds before which none is logged

	// connect dials with nd (nil: nd.DialContext): a test's stand-in for
	// the kernel, whose refusals of the sidecar's own (EMFILE) a test
	// cannot cause without starving the whole test binary.
	connect func(ctx context.Context, nd *net.Dialer, network, addr string) (net.Conn, error)
}

// starvedLogEvery spaces the warnings of a sidecar out of file
// descriptors: each request fails alike until some are closed, and a
// line per request would flood the log just then.
const starvedLogEvery = 10 * time.Second

func newDialer(connectTimeout time.Duration, resolve map[string]string, self *selfAddrs) *dialer {
	return &dialer{d: net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}, resolve: resolve, self: self}
}

// h2UpstreamUserTimeout bounds how long data the sidecar sent on an
// upstream h2c connection may go unacknowledged, and how long the
// connection may go without an answer to a TCP keepalive probe
// (TCP_USER_TIMEOUT, set at its dial: poolH2). The sidecar PINGs an
// upstream only after H2UpstreamPingAfter without a frame, and Linux sends
// no keepalive probe while data is unacknowledged: a new call's HEADERS on
// a kept connection to a black-holed upstream (a node gone, packets
// dropped) waited for its retransmissions to give up, about 5 min 25 s
// (before 2026-12-07), where the 30 s PING had ended it at 45 s. Now that
// call fails after about 30 s, and a quiet call (a watch) after the
// keepalive's 30 s idle and an unanswered probe, about 45 s (measured;
// docs/grpc.md, "Limits"). grpc-go's client sets it too, to its keepalive
// timeout. Not on HTTP/1 connections: Linux applies it to zero-window
// probes too, and an HTTP/1 upstream may leave an upload unread for as
// long as it likes; over HTTP/2 the upstream's reader takes frames
// whatever its handlers do, so a zero window there means it has stopped.
// A variable for the test that black-holes an upstream (in a network
// namespace of its own) not to wait the full figure.
var h2UpstreamUserTimeout = 30 * time.Second

func (d *dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return d.dial(ctx, network, addr, 0)
}

// dial is DialContext, with userTimeout, when positive, set as the
// socket's TCP_USER_TIMEOUT before it connects (once per connection).
func (d *dialer) dial(ctx context.Context, network, addr string, userTimeout time.Duration) (net.Conn, error) {
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
	dialing := new(dialRecord) // this dial's sockets, until it returns (ownConns)
	nd.ControlContext = func(_ context.Context, _, address string, rc syscall.RawConn) error {
		ap, err := controlAddr(address)
		if err != nil {
			// Every TCP dial has an IP address here: one that cannot be
			// read is refused, never let through unchecked.
			return &selfError{addr: address, unread: true}
		}
		if d.self.has(ap, arrived) {
			return &selfError{addr: address}
		}
		if userTimeout > 0 {
			if err := setUserTimeout(rc, userTimeout); err != nil {
				return fmt.Errorf("setting TCP_USER_TIMEOUT on the socket to %s: %w", address, err)
			}
		}
		d.own.dialing(dialing, ap, rc)
		return nil
	}
	var c net.Conn
	var err error
	if d.connect != nil {
		c, err = d.connect(ctx, &nd, network, addr)
	} else {
		c, err = nd.DialContext(ctx, network, addr)
	}
	if err != nil {
		d.own.dialed(nil, dialing)
		var se *selfError
		if errors.As(err, &se) {
			se.asked = asked
			return nil, se
		}
		if ownResources(err) {
			d.starve(asked, err)
			return nil, &dialError{&localError{err}}
		}
		return nil, &dialError{err}
	}
	return d.own.dialed(rawio.Wrap(c), dialing), nil
}

// ownConns are the sidecar's own upstream connections by their two ends
// (connKey), from their dial to their Close. The init rules exempt them
// from redirection by the sidecar's UID (docs/interception.md); a
// sidecar run as another (by hand, as root, a webhook that changed
// runAsUser) has each of them redirected back to its own listener, which
// relayed it again: one app connection made a hop per free place of the
// listener (1,023 at the default cap, every file descriptor without
// one). A redirected connection whose source is one of these is such a
// loop (Handler.RefuseLoop). The cost is a lock and a record at each
// dial (its sockets while they connect, then its connection) and at each
// close; nothing per request.
type ownConns struct {
	mu sync.Mutex
	m  map[connKey]*ownConn
	// pending are the sockets of the dials under way, by the address
	// dialled: a connection comes back (is accepted) as soon as its
	// handshake is over, which may be before its dial has returned and
	// put it in m. Such a socket's local address is asked of it then
	// (isPending).
	pending map[netip.AddrPort][]*pendingDial
	// loops counts the connections refused as loops since the start;
	// loopNext spaces their log lines (loopLogEvery).
	loops    atomic.Uint64
	loopNext atomic.Int64 // unix nanoseconds before which none is logged
}

// loopLogEvery spaces the errors of a sidecar whose own connections come
// back to it: every app connection loops alike until it is run as the
// UID the rules exempt.
const loopLogEvery = 10 * time.Second

// loop counts a refused loop at now; it reports the count since the
// start and whether a line is due (one per loopLogEvery).
func (o *ownConns) loop(now time.Time) (n uint64, log bool) {
	n = o.loops.Add(1)
	t := now.UnixNano()
	next := o.loopNext.Load()
	return n, t >= next && o.loopNext.CompareAndSwap(next, t+int64(loopLogEvery))
}

// ownConn is an upstream connection recorded in ownConns until its
// Close.
type ownConn struct {
	net.Conn
	own *ownConns
	key connKey
}

// connKey is a connection by both its ends. The local address alone is
// not the sidecar's: Linux gives one ephemeral port to connections to
// different destinations, and the app shares the sidecar's port space,
// so an app's connection elsewhere may come from the port of one of the
// sidecar's. A loop comes back with the address the sidecar dialled as
// its original destination.
type connKey struct{ local, remote netip.AddrPort }

// pendingDial is a socket of a dial under way to addr.
type pendingDial struct {
	addr netip.AddrPort
	rc   syscall.RawConn
}

// dialRecord is one dial's sockets (a name's dial may try several
// addresses, two at once with both families); under ownConns.mu.
type dialRecord struct {
	socks []*pendingDial
	// done: the dial has returned; a socket of its fallback still being
	// made (the dialer does not wait for it) is not recorded.
	done bool
}

// dialing records a socket of dial about to connect to ap (the dialer's
// Control hook).
func (o *ownConns) dialing(dial *dialRecord, ap netip.AddrPort, rc syscall.RawConn) {
	p := &pendingDial{addr: unmapped(ap), rc: rc}
	o.mu.Lock()
	defer o.mu.Unlock()
	if dial.done {
		return
	}
	dial.socks = append(dial.socks, p)
	if o.pending == nil {
		o.pending = map[netip.AddrPort][]*pendingDial{}
	}
	o.pending[p.addr] = append(o.pending[p.addr], p)
}

// dialed ends a dial: its sockets leave pending and c, its connection
// (nil when it failed), is recorded, in one step, so that a look between
// the two finds it in one or the other. c is returned wrapped, unless
// its addresses cannot be read (not TCP).
func (o *ownConns) dialed(c net.Conn, dial *dialRecord) net.Conn {
	var oc *ownConn
	if c != nil {
		la, lok := c.LocalAddr().(*net.TCPAddr)
		ra, rok := c.RemoteAddr().(*net.TCPAddr)
		if lok && rok {
			oc = &ownConn{Conn: c, own: o, key: connKey{unmapped(la.AddrPort()), unmapped(ra.AddrPort())}}
		}
	}
	o.mu.Lock()
	dial.done = true
	for _, p := range dial.socks {
		ps := o.pending[p.addr]
		for i, q := range ps {
			if q == p {
				ps = append(ps[:i], ps[i+1:]...)
				break
			}
		}
		if len(ps) == 0 {
			delete(o.pending, p.addr)
		} else {
			o.pending[p.addr] = ps
		}
	}
	if oc != nil {
		if o.m == nil {
			o.m = map[connKey]*ownConn{}
		}
		o.m[oc.key] = oc
	}
	o.mu.Unlock()
	if oc == nil {
		return c
	}
	return oc
}

// has reports whether from is the local address of an upstream
// connection of the sidecar's to to: one open, or one whose dial has not
// returned yet (its socket is asked its address: getsockname(2), only
// when the sidecar is dialling to at that moment).
func (o *ownConns) has(from, to netip.AddrPort) bool {
	from, to = unmapped(from), unmapped(to)
	o.mu.Lock()
	_, ok := o.m[connKey{from, to}]
	var ps []*pendingDial
	if !ok {
		ps = append(ps, o.pending[to]...)
	}
	o.mu.Unlock()
	for _, p := range ps {
		if p.local() == from {
			return true
		}
	}
	return ok
}

// local is the socket's local address; zero once it is closed (its dial
// failed) or when it cannot be read.
func (p *pendingDial) local() netip.AddrPort {
	var sa syscall.Sockaddr
	if err := p.rc.Control(func(fd uintptr) { sa, _ = syscall.Getsockname(int(fd)) }); err != nil {
		return netip.AddrPort{}
	}
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *syscall.SockaddrInet6:
		return unmapped(netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)))
	}
	return netip.AddrPort{}
}

// Close forgets c, unless its address is already another's (a second
// Close after the port was given to a new connection), and closes it.
func (c *ownConn) Close() error {
	c.own.mu.Lock()
	if c.own.m[c.key] == c {
		delete(c.own.m, c.key)
	}
	c.own.mu.Unlock()
	return c.Conn.Close()
}

// ReadLazy is the connection's own (rawio.ReadLazy asserts it on the
// connection it is given, without unwrapping).
func (c *ownConn) ReadLazy(bufs rawio.Buffers) ([]byte, int, error) {
	return rawio.ReadLazy(c.Conn, bufs)
}

// CloseWrite half-closes the connection under c: closeWrite, which a
// relay passes an orderly end on with, asserts it without unwrapping.
func (c *ownConn) CloseWrite() error { return netconn.CloseWrite(c.Conn) }

// Unwrap is the connection under c (netconn.Find: raw I/O, SetLinger).
func (c *ownConn) Unwrap() net.Conn { return c.Conn }

// starve counts and logs a dial to asked that failed for want of the
// sidecar's own resources (localError).
func (d *dialer) starve(asked string, err error) {
	n := d.starved.Add(1)
	now := time.Now().UnixNano()
	next := d.starvedNext.Load()
	if now < next || !d.starvedNext.CompareAndSwap(next, now+int64(starvedLogEvery)) {
		return
	}
	log := d.log
	if log == nil {
		log = slog.Default()
	}
	log.Warn("the sidecar is out of file descriptors or memory for upstream connections: answered 503 overloaded, not held against the destination",
		"address", asked, "error", err, "dials_failed_so_far", n)
}

// ownResources reports whether a dial failed for want of the sidecar's
// own resources, not the upstream's: the process's or the system's file
// descriptors (EMFILE, ENFILE), or kernel memory for a socket (ENOBUFS,
// ENOMEM). net.Dialer returns them as a *net.OpError around an
// *os.SyscallError ("socket"); a name's lookup that could not open its
// socket, as a *net.DNSError that keeps only the text.
func ownResources(err error) bool {
	var dns *net.DNSError
	isDNS := errors.As(err, &dns)
	for _, errno := range [...]syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, errno) || isDNS && strings.HasSuffix(dns.Err, errno.Error()) {
			return true
		}
	}
	return false
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
// ejected. As a refused dial (refusedDial) it goes once to another
// endpoint whatever the method and the policy (nothing was sent), counts
// toward the endpoint's ejection, and for the breaker as failOn says
// only when it is the request's answer (docs/policy.md), and is still
// never dialled.
func endpointSelf(err error) error {
	var se *selfError
	if !errors.As(err, &se) {
		return err
	}
	return &dialError{&selfEndpointError{addr: se.addr}}
}

// refusedDial reports whether err is a dial that reached no one: the
// upstream's host refused the connection (ECONNREFUSED: an RST to the
// SYN, nothing listening, as a pod that closed its listener before the
// control plane dropped it), or reset it as it was made (ECONNRESET from
// connect: a listener that closed with the connection still queued,
// unaccepted, the same pod a moment later), or the endpoint is the
// sidecar's own address (endpointSelf), never dialled. Nothing of the request was sent and no
// app saw it, so such a try is the balancer's miss, not a failed request:
// it goes once to another endpoint whatever the policy (forward.go,
// elsewhere), and its breaker verdict is held (heldVerdict). A dial that
// timed out (a black-holed pod) is not one: it took the connect timeout
// of the request's time, and says nothing of whether a SYN reached an
// app. Nor is a resend's refused dial (resentError): the request was
// written before (resentRefused; only one safe to repeat goes elsewhere
// then: forward.go, refusedBy).
func refusedDial(err error) bool {
	var de *dialError
	if !errors.As(err, &de) {
		return false
	}
	return errors.Is(de.err, syscall.ECONNREFUSED) || errors.Is(de.err, syscall.ECONNRESET) ||
		errors.As(de.err, new(*selfEndpointError))
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

// poolKind is the transport that keeps a connection: each empties its own
// pool (connPools.retire's caller).
type poolKind uint8

const (
	poolFast  poolKind = iota // fastTransport's own pool: per connection
	poolStd                   // http.Transport, HTTP/1.x
	poolH2                    // the h2c transport (HTTP/2, gRPC)
	poolKinds                 // how many
)

// pooled is DialContext for a transport of kind that keeps its
// connections: one to an IP address (an endpoint, the original
// destination of a redirected connection) is tracked by that address
// until it is closed, so that an endpoint leaving its Service's endpoints
// takes its connections with it (connPools.retire). One to a name (no
// endpoints: DNS and kube-proxy) is no endpoint's and is not tracked.
// Tunnels and relays dial with DialContext: a connection that is no
// pool's is left to end by itself, as Envoy leaves a TCP proxy's.
func (d *dialer) pooled(kind poolKind) func(context.Context, string, string) (net.Conn, error) {
	var userTimeout time.Duration
	if kind == poolH2 {
		userTimeout = h2UpstreamUserTimeout // HTTP/2 only: h2UpstreamUserTimeout says why
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.dial(ctx, network, addr, userTimeout)
		if err != nil {
			return nil, err
		}
		if ap, perr := netip.ParseAddrPort(addr); perr == nil {
			c = d.pools.add(c, unmapped(ap), kind)
		}
		if kind == poolStd {
			// Go's transport sends a request again on its next kept
			// connection: the bytes each try wrote tell boundReplays'
			// guard whether it reached the upstream (replaybound.go).
			// The fast transport bounds its own (fastpath.go).
			c = replayguard.Count(c)
		}
		return c, nil
	}
}

// unmapped is ap with an IPv4-mapped address as the IPv4 one, so that
// an address is one key however it was spelled.
func unmapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// connPools tracks the kept-alive upstream connections by the address
// they were dialled to, from the dial to their Close: the upstream pools
// drop an idle connection only at their idle timeout, and Go's
// http.Transport has no way to close one host's. Without this a pod that
// vanished without a FIN or RST (its node gone) kept its connections in
// the pools for up to their idle timeout, and a request written on one
// when the address came back (a new pod given the same IP, the same pod
// ready again) waited for its timeout or reached the wrong pod.
//
// It takes no lock and allocates nothing per request: a connection is
// added once, at its dial, and removed once, at its Close; the fast
// transport reads its flag (an atomic load) where it takes a kept
// connection (get) and keeps one (release), and its reads and writes do
// not go through the record (fconn.kept).
type connPools struct {
	mu    sync.Mutex
	conns map[netip.AddrPort]map[*keptConn]struct{}
	// sweepers empty each pool of its idle connections (retirer).
	sweepers [poolKinds]func()
	// gone are the addresses retired and in no Service's endpoints
	// since, each until goneFor after it left. A try that picked the
	// endpoint as it left may still be dialling it (the balancer's Pick
	// and the endpoints' update race): a connection made to one before
	// then is retired as it is made, serves that try and is closed.
	gone map[netip.AddrPort]time.Time
}

// goneFor is how long a retired address's new connections are retired
// at birth: longer than any dial of a try that picked it before it left
// (the connect timeout, plus the time between the pick and the dial).
func goneFor(connectTimeout time.Duration) time.Duration { return connectTimeout + 10*time.Second }

// keptConn is a connection connPools tracks.
type keptConn struct {
	net.Conn
	pools *connPools
	addr  netip.AddrPort
	kind  poolKind
	// retired: its endpoint left every Service's endpoints. Its pool
	// sends no new request on it and closes it when its request ends
	// (the fast transport), or when idle (Go's: CloseIdleConnections).
	retired atomic.Bool
	// wait is how long a read of a retired connection of Go's waits
	// before its pool is swept (readRetired); its reader's alone.
	wait time.Duration
}

// Read is the connection's, but for a retired connection of Go's
// transports (the fast transport reads under c): readRetired.
func (c *keptConn) Read(p []byte) (int, error) {
	if !c.retired.Load() {
		return c.Conn.Read(p)
	}
	return c.readRetired(p)
}

// Bounds of keptConn.wait.
const (
	retiredWaitMin = 250 * time.Millisecond
	retiredWaitMax = time.Minute
)

// readRetired reads a retired connection of Go's transports. Go's
// pools say neither when a connection goes idle nor how to close one
// host's, but their read loop always has a read waiting on it, idle or
// not: a read that waits is what an idle connection does, and is when
// its pool is swept (CloseIdleConnections, which closes idle
// connections only, so harmless to one still busy: a slow answer, an
// HTTP/2 connection with a quiet stream). The read then fails as the
// sweep closes it, and Go's read loop drops the idle connection as one
// the upstream closed. The wait doubles each time a sweep left the
// connection open (retiredWaitMax at most), so that a long stream on it
// costs the other hosts' idle connections a sweep every so often, not
// one per read.
func (c *keptConn) readRetired(p []byte) (int, error) {
	if c.wait == 0 {
		c.wait = retiredWaitMin
	}
	t := time.AfterFunc(c.wait, func() { c.pools.sweep(c.kind) })
	n, err := c.Conn.Read(p)
	if !t.Stop() {
		c.wait = min(2*c.wait, retiredWaitMax)
	}
	return n, err
}

// Close forgets c and closes it.
func (c *keptConn) Close() error {
	c.pools.forget(c)
	return c.Conn.Close()
}

// Unwrap is the connection under c (netconn.Find: raw I/O, CloseWrite).
func (c *keptConn) Unwrap() net.Conn { return c.Conn }

func (p *connPools) add(nc net.Conn, ap netip.AddrPort, kind poolKind) *keptConn {
	c := &keptConn{Conn: nc, pools: p, addr: ap, kind: kind}
	p.mu.Lock()
	if until, ok := p.gone[ap]; ok && time.Now().Before(until) {
		c.retired.Store(true)
	}
	if p.conns == nil {
		p.conns = map[netip.AddrPort]map[*keptConn]struct{}{}
	}
	set := p.conns[ap]
	if set == nil {
		set = map[*keptConn]struct{}{}
		p.conns[ap] = set
	}
	set[c] = struct{}{}
	p.mu.Unlock()
	return c
}

// sweep empties pool kind of its idle connections.
func (p *connPools) sweep(kind poolKind) {
	p.mu.Lock()
	f := p.sweepers[kind]
	p.mu.Unlock()
	if f != nil {
		f()
	}
}

func (p *connPools) forget(c *keptConn) {
	p.mu.Lock()
	if set := p.conns[c.addr]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(p.conns, c.addr)
		}
	}
	p.mu.Unlock()
}

// retire marks the connections to removed, addresses that have left
// every Service's endpoints, retired; back are addresses in a Service's
// endpoints again, whose retired connections still open (busy when they
// were retired, idle in Go's pools since) must go before a request picks
// them. now is the update's time, keep how long a removed address's new
// connections are retired (goneFor). It reports the pools that hold any
// such connection, to be emptied of their idle ones (retired ones only,
// for the fast transport), and how many connections it retired.
func (p *connPools) retire(removed, back []netip.AddrPort, now time.Time, keep time.Duration) (sweep [poolKinds]bool, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ap, until := range p.gone {
		if !now.Before(until) {
			delete(p.gone, ap)
		}
	}
	for _, ap := range back {
		delete(p.gone, ap)
		for c := range p.conns[ap] {
			if c.retired.Load() {
				sweep[c.kind] = true
			}
		}
	}
	for _, ap := range removed {
		if p.gone == nil {
			p.gone = map[netip.AddrPort]time.Time{}
		}
		p.gone[ap] = now.Add(keep)
		for c := range p.conns[ap] {
			if !c.retired.Swap(true) {
				n++
			}
			sweep[c.kind] = true
		}
	}
	return sweep, n
}

// retirer is endpoints.retire: the kept connections to removed, the
// addresses that left every Service's endpoints, are retired
// (connPools.retire) and each pool holding one lets go of its idle ones
// at once, those still open to back (addresses in a Service's endpoints
// again) too. What each pool can do:
//
//   - the fast transport (ours, HTTP/1.x) closes the idle ones, sends no
//     new request on the others and closes each as its request ends;
//   - Go's HTTP/1.x and h2c transports have no way to close one host's
//     connections: CloseIdleConnections closes the idle ones of every
//     host (only when a removed address has one there, so rarely but for
//     --std-transport), and an HTTP/2 connection with streams open drains
//     them untouched. One busy when its endpoint left is not picked again
//     (the balancer no longer has the address), and is closed by a sweep
//     once it waits idle (keptConn.readRetired).
//
// fast is nil without the fast transport (--std-transport).
func (d *dialer) retirer(fast *fastTransport, std, h2 *http.Transport, log *slog.Logger) func(removed, back []netip.AddrPort) {
	keep := goneFor(d.d.Timeout)
	d.pools.mu.Lock()
	d.pools.sweepers[poolStd] = std.CloseIdleConnections
	d.pools.sweepers[poolH2] = h2.CloseIdleConnections
	d.pools.mu.Unlock()
	return func(removed, back []netip.AddrPort) {
		sweep, n := d.pools.retire(removed, back, time.Now(), keep)
		closed := 0
		if sweep[poolFast] && fast != nil {
			closed = fast.closeRetired()
		}
		for _, k := range [...]poolKind{poolStd, poolH2} {
			if sweep[k] {
				d.pools.sweep(k)
			}
		}
		if n > 0 || sweep != [poolKinds]bool{} {
			log.Debug("endpoints left: their upstream connections retired",
				"removed", len(removed), "retired", n, "closed_idle", closed,
				"swept_http1", sweep[poolStd], "swept_h2", sweep[poolH2])
		}
	}
}

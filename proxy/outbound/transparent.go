package outbound

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/internal/echo"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// This file is the outbound path of connections that iptables redirected
// to the sidecar (docs/interception.md): HTTP/1.x requests whose
// destination is the address the app connected to, and connections of
// other protocols relayed as opaque TCP.

// redirect is a redirected connection's original destination, put in its
// requests' context by the server's ConnContext (WithOriginalDst).
type redirect struct {
	addr netip.AddrPort
	text string // addr.String(), made once per connection
	port string

	// dests are the handler's, for the Services' own addresses
	// (vipTable.authority); set by the first request (an HTTP/2
	// connection's streams race to it).
	dests atomic.Pointer[destinations]

	// The authority of the connection's last request, by Host and the
	// ClusterIPs it was named with: requests on one connection are
	// served one after the other, and an app sends the same Host on
	// each, so naming costs nothing after the first.
	lastHost, lastAuthority string
	lastVIPs                *vipTable
	lastByHost              bool
}

type redirectKey struct{}

// WithOriginalDst returns ctx carrying the original destination of a
// redirected connection, for the handler Transparent returns. It is an
// http.Server's ConnContext: once per connection.
func WithOriginalDst(ctx context.Context, addr netip.AddrPort) context.Context {
	return context.WithValue(ctx, redirectKey{}, &redirect{addr: addr, text: addr.String(), port: strconv.Itoa(int(addr.Port()))})
}

// Transparent returns the handler of redirected HTTP/1.x and h2c connections
// (their server's ConnContext calls WithOriginalDst). The original
// destination decides which Service a request is for, for its policy,
// breaker, metrics, logs and balancing: a Service's ClusterIP:port names
// that Service whatever the Host; else the Host header names it, on the
// port the app connected to, unless it names a Service the app did not
// connect to (vipTable.authority). Without endpoints it is sent
// to the original destination, never to a new resolution of Host; when
// the control plane sent endpoints for the Service it names, it is
// balanced over them (pickEndpoint), unless the original destination is
// one of them, or of an address family none of them has: then each try
// goes there (pinned).
func (h *Handler) Transparent() http.Handler { return transparentHandler{h} }

type transparentHandler struct{ h *Handler }

func (t transparentHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rd, _ := r.Context().Value(redirectKey{}).(*redirect)
	if rd != nil && rd.dests.Load() == nil {
		rd.dests.Store(t.h.dests)
	}
	t.h.serve(w, r, rd)
}

// authority names a redirected request's destination
// (vipTable.authority): a Service by its ClusterIP:port, else
// the Host header's name on the original destination's port, or the
// address itself. byHost: Host named it (vipTable.name), and the
// original destination may be a pod of the Service it names (pinned).
func (rd *redirect) authority(r *http.Request) (a string, byHost bool, err error) {
	if r.URL.Host != "" || r.URL.Scheme != "" || r.URL.Opaque != "" || r.Method == http.MethodConnect {
		// Detection relays a connection to another proxy as opaque TCP;
		// this is a later request on an HTTP connection changing its mind.
		return "", false, errors.New("request target " + echo.Quote(r.RequestURI) + " on a redirected connection: send origin-form requests (a path) with a Host header")
	}
	d := rd.dests.Load() // set: serve got rd from Transparent
	vips := d.eps.vips.Load()
	// An HTTP/2 connection serves its streams at once: no cache.
	h2 := r.ProtoMajor >= 2
	if !h2 && r.Host == rd.lastHost && vips == rd.lastVIPs && rd.lastAuthority != "" {
		return rd.lastAuthority, rd.lastByHost, nil
	}
	host := r.Host
	if strings.LastIndexByte(host, ':') > strings.LastIndexByte(host, ']') {
		host = host[:strings.LastIndexByte(host, ':')]
	}
	host = strings.Trim(host, "[]")
	a, byHost = vips.name(rd.addr, rd.text, host, rd.port, d.namespace)
	if !h2 {
		rd.lastHost, rd.lastAuthority, rd.lastVIPs, rd.lastByHost = r.Host, a, vips, byHost
	}
	return a, byHost, nil
}

// DefaultTCPIdleTimeout closes an opaque TCP relay (or a CONNECT tunnel)
// that moved no byte either way for this long: Envoy's tcp_proxy default.
// Connection pools of databases keep idle connections for minutes
// (HikariCP 10 min, Go's database/sql without limit); an idle timeout
// shorter than the pool's would hand the app dead connections.
const DefaultTCPIdleTimeout = time.Hour

// TCPConn describes a redirected connection for ServeTCP.
type TCPConn struct {
	// Original is the destination the app connected to: what names it
	// when it is a Service's ClusterIP:port, and what is dialled unless
	// the Service it names has endpoints (dialTunnel).
	Original netip.AddrPort
	// SNI, when not empty, names the destination (with Original's port)
	// for its breaker, metrics and log line instead of the address, as
	// Host does for a redirected request (vipTable.authority): not at a
	// ClusterIP, which names its Service, nor when it names a Service the
	// app did not connect to.
	SNI string
	// Protocol is what detection found, for the log line.
	Protocol string
}

// Results of minimesh_tcp_connections_total besides the X-Minimesh-Error
// kinds of failed connects (connect-failure, circuit-open, forbidden,
// timeout).
const (
	tcpOK          = "ok"
	tcpReset       = "reset"        // a side reset while the other was open (lateReset), or a write failed
	tcpIdleTimeout = "idle-timeout" // no byte for TCPIdleTimeout
	tcpShutdown    = "shutdown"     // closed at the end of the drain
	tcpLoop        = "loop"         // the sidecar's own connection redirected back to it (RefuseLoop)
)

// RefuseLoop is the redirected listener's check (transparent.Config's
// Loop): c, redirected to orig, is refused with a reset when it comes
// from the local address of one of the sidecar's own upstream
// connections to orig (ownConns: an app's connection elsewhere may have
// the same source port). The sidecar then does not run as the UID the
// init rules exempt, and each connection it makes comes back to it:
// refused at the first return, one hop, rather than relayed again until
// its listener was full. Counted in minimesh_tcp_connections_total as
// loop under the destination ServeTCP would name, with an access log
// line, and logged at error level once per loopLogEvery with the count.
// A map lookup per redirected connection (and a getsockname(2) per dial
// to orig under way at that moment); nothing per request.
func (h *Handler) RefuseLoop(c net.Conn, orig netip.AddrPort) bool {
	ra, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok || !h.dialer.own.has(ra.AddrPort(), orig) {
		return false
	}
	start := time.Now()
	addr := orig.String()
	authority, _ := h.dests.eps.vips.Load().name(orig, addr, "", strconv.Itoa(int(orig.Port())), h.dests.namespace)
	st := &reqState{dest: h.dests.get(authority), authority: authority, start: start, dial: addr}
	h.endTCP(st, TCPConn{Original: orig}, tcpLoop, 0, 0)
	abort(c)
	if n, due := h.dialer.own.loop(start); due {
		h.log.Error("the sidecar's own connection came back to it: does it run as --proxy-uid, the UID the init rules exempt? Refused (reset) at its first return",
			"original_dst", addr, "source", ra.String(), "loops", n)
	}
	return true
}

// noData is transparent.NoData, the protocol of a connection that sent
// nothing during detection.
const noData = "no-data"

// ServeTCP relays a redirected connection as opaque TCP, and closes it. A
// Service's ClusterIP:port names it by that Service, for the policy,
// breaker, metric and log line (TCPConn), and, when the control plane
// sent the Service's endpoints, it goes to one of them, balanced and
// ejected as the Service's HTTP requests are (dialTunnel), or, when its
// original destination is one of them (or of an address family none of
// them has), to that one alone, retries included (pinned); else to its
// original destination. The dial goes through the dialer of the L7 path
// (never one of the sidecar's own ports) and the destination's breaker:
// a connect failure counts, retries follow the policy's connect-failure
// retries (to another endpoint), and an open breaker resets the app's
// connection at once (counted in minimesh_circuit_breaker_rejected_total).
// Then bytes flow both ways, half-closes passed on, until both sides are
// done or nothing moved for TCPIdleTimeout. A connection its app reset
// before its first byte is not dialled: it ends reset. It ends with a
// metric and a log line.
func (h *Handler) ServeTCP(client net.Conn, c TCPConn) {
	h.relays.Add()
	defer h.relays.Done()
	if t, ok := client.(interface{ Taken() }); ok {
		t.Taken() // counted: the dispatcher's drain may stop waiting for it
	}
	start := time.Now()
	addr := c.Original.String()
	// Named as a redirected HTTP request is, the SNI in the place of Host
	// (vipTable.authority): a Service's ClusterIP:port is that Service,
	// its policy, breaker, metrics and log line, as Linkerd and Envoy name
	// it, and its connections are balanced over its endpoints, as
	// Linkerd balances opaque TCP; without endpoints the dial goes to the
	// address, through kube-proxy.
	authority, bySNI := h.dests.eps.vips.Load().name(c.Original, addr, c.SNI, strconv.Itoa(int(c.Original.Port())), h.dests.namespace)
	dst := h.dests.get(authority)
	st := &reqState{dest: dst, authority: authority, start: start, dial: addr}
	if bySNI {
		// A pod of the Service the SNI names, connected to on purpose:
		// it, not a balanced pick (pinned).
		st.pin, st.pinDial = pinned(dst.lb, c.Original, addr)
	}
	// The listener the connection arrived on is the sidecar's own too.
	// The dial ends with the drain (Handler.dials).
	ctx := context.WithValue(h.dials, http.LocalAddrContextKey, client.LocalAddr())
	if t := dst.policy.Spec.Timeout; t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, t, errTimeout)
		defer cancel()
	}
	if d, ok := client.(interface{ DetectErr() error }); ok && c.Protocol == noData && d.DetectErr() != nil {
		// The app reset its connection before its first byte: nothing to
		// carry, and no connection is made upstream for it (as Envoy's and
		// Linkerd's detection); counted and logged as the reset it is.
		h.endTCP(st, c, tcpReset, 0, 0)
		abort(client)
		return
	}
	up, err := h.dialTunnel(ctx, dst, addr, st)
	if err != nil {
		if context.Cause(ctx) == errShutdown {
			// Cut by the drain's end (dialTunnel took it as the app's
			// leaving: no breaker failure), not the upstream's failure:
			// closed as the drain closes the relays left.
			h.endTCP(st, c, tcpShutdown, 0, 0)
			client.Close()
			return
		}
		_, kind, _ := errorResponse(err, dst.name)
		h.log.Debug("opaque connection refused", "destination", dst.name, "original_dst", addr, "error", err)
		h.endTCP(st, c, kind, 0, 0) // counted before the reset the app sees
		abort(client)
		return
	}
	sent, received, result := h.relayConn(client, nil, up, dst)
	st.connClosed()
	h.endTCP(st, c, result, sent, received)
}

// relayConn copies the bytes of an opaque connection, a redirected one
// (ServeTCP) or a CONNECT tunnel, both ways between client and up until
// both directions are done, a side fails, nothing moved for
// TCPIdleTimeout, or the drain closes it; early are bytes already read
// from the client, sent up first. It counts the bytes in
// minimesh_tcp_*_bytes_total as they pass, and returns them and the
// result of minimesh_tcp_connections_total.
func (h *Handler) relayConn(client net.Conn, early []byte, up net.Conn, dst *destination) (sent, received int64, result string) {
	if !h.tunnels.add(client, up) {
		// Dialled after the drain closed the others: it would outlive
		// the drain unseen.
		client.Close()
		up.Close()
		return 0, 0, tcpShutdown
	}
	defer h.tunnels.remove(client, up)
	bytes := dst.metrics.TCP()
	if len(early) > 0 {
		if _, err := up.Write(early); err != nil {
			abort(client)
			abort(up)
			return 0, 0, tcpReset
		}
		sent = int64(len(early))
		bytes.Sent.Add(float64(sent))
	}
	rl := &relay{client: client, up: up, bytes: bytes}
	s, received, result := rl.run(h.cfg.TCPIdleTimeout)
	if result == tcpReset && h.closing.Load() {
		result = tcpShutdown
	}
	return sent + s, received, result
}

// endTCP records an opaque connection: its metric and its log line.
func (h *Handler) endTCP(st *reqState, c TCPConn, result string, sent, received int64) {
	st.dest.metrics.TCPConnection(result)
	if l := h.cfg.AccessLog; l != nil {
		e := telemetry.Entry{
			Time: st.start, Service: h.cfg.ServiceName, Destination: st.dest.name,
			Protocol: c.Protocol, OriginalDst: st.dial, SNI: c.SNI,
			Duration: time.Since(st.start), Attempts: st.attempts, Breaker: breakerState(st.dest),
			BytesIn: sent, BytesOut: received,
		}
		if result != tcpOK {
			e.Error = result
		}
		l.Log(&e)
	}
}

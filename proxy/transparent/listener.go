// Package transparent is the sidecar's side of iptables interception
// (docs/interception.md): on the outbound listener it tells connections
// that iptables redirected from those made to the listener itself (an
// explicit proxy client), reads a redirected connection's original
// destination, and detects its protocol from its first bytes.
//
// A Dispatcher wraps the outbound listener. Its Accept returns only the
// explicit connections, so that the http.Server serving them works as
// without interception, at the cost of one getsockopt(2) per connection.
// Each redirected connection is handed to a goroutine of its own for
// detection; HTTP/1.x and h2c ones then come out of the Dispatcher's HTTP listener
// (served by a second http.Server with the same handler) and every other
// one goes to the OnTCP func.
package transparent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/minimesh/minimesh/internal/netconn"
	"github.com/minimesh/minimesh/internal/rawio"
	"github.com/minimesh/minimesh/proxy/internal/chanlistener"
	"github.com/minimesh/minimesh/proxy/internal/inflight"
)

// DefaultDetectTimeout is how long a redirected connection may take to send
// enough bytes to tell its protocol. An app on the same host sends its
// request as soon as it has connected, so any client-speaks-first protocol
// is decided within microseconds; the second is headroom for an app held
// back by its CPU limit or a garbage collection. A client that sends
// nothing in that time is relayed as opaque TCP (its server may be the one
// to speak first), which delays such a server's greeting by up to this
// long: list its port in --opaque-ports.
const DefaultDetectTimeout = time.Second

// maxPeek bounds the bytes read for detection: one whole TLS record, which
// holds any ClientHello of today's clients, and request lines of up to
// 16 KiB. Past it the connection is relayed as opaque TCP.
const maxPeek = 5 + maxRecord

// Config configures a Dispatcher.
type Config struct {
	// OpaquePorts are relayed at once, without detection.
	OpaquePorts *Ports
	// DetectTimeout: 0 is DefaultDetectTimeout.
	DetectTimeout time.Duration
	// OnTCP relays a redirected connection that is neither HTTP/1.x nor h2c; it owns
	// the connection and returns when the relay is over. It calls the
	// Conn's Taken once it counts the relay as its own (for its drain):
	// until then the Dispatcher's Close waits for it, so that no relay is
	// between the two counts when the drain looks.
	OnTCP func(*Conn)
	// Loop, when set, is asked of each redirected connection before its
	// detection whether it is one of the sidecar's own upstream
	// connections come back to it (a sidecar the rules do not exempt:
	// docs/interception.md); it reports true once it has refused (closed)
	// it. Without it one app connection made a hop through the sidecar
	// per free place of its listener.
	Loop func(c net.Conn, orig netip.AddrPort) bool
	// Hijacked is told of each connection taken for detection, so that a
	// connection tracker (connlimit) leaves it to its new owner.
	Hijacked func(net.Conn)
	Logger   *slog.Logger
	// LongRequestLines: a request line still arriving when maxPeek bytes
	// have been read is HTTP1, for the HTTP server's header limit to
	// bound, rather than relayed as unknown (the inbound listener's: a
	// caller's long URL keeps its HTTP handling).
	LongRequestLines bool
}

// Conn is a redirected connection. Its Read returns the bytes read for
// detection first.
type Conn struct {
	net.Conn
	// Original is the destination the app connected to.
	Original netip.AddrPort
	// Protocol is what detection found.
	Protocol Protocol
	// SNI is the ClientHello's server name, for TLS.
	SNI string
	// Detect is how long detection took.
	Detect time.Duration
	// ReadErr is the read error that ended detection, neither its timeout
	// nor an orderly end: the caller reset the connection. The socket
	// reports it once, and reads as ended in order after that: the first
	// Read after the peeked bytes returns it, so that a relay passes the
	// reset on.
	ReadErr error

	peeked  []byte
	errRead bool   // a Read has returned ReadErr
	taken   func() // ends its detection's count, once (Taken)
}

// DetectErr is ReadErr, for a relay that knows c as a net.Conn.
func (c *Conn) DetectErr() error { return c.ReadErr }

// Taken tells the Dispatcher that OnTCP has taken the connection over
// (counted it among its relays): its detection is over. Later calls do
// nothing.
func (c *Conn) Taken() {
	if c.taken != nil {
		c.taken()
	}
}

func (c *Conn) Read(p []byte) (int, error) {
	if len(c.peeked) > 0 {
		n := copy(p, c.peeked)
		c.take(n)
		return n, nil
	}
	if c.ReadErr != nil && !c.errRead {
		c.errRead = true
		return 0, c.ReadErr
	}
	return c.Conn.Read(p)
}

// ReadLazy is rawio.ReadLazy: the bytes read for detection first, then
// the accepted connection's own.
func (c *Conn) ReadLazy(bufs rawio.Buffers) ([]byte, int, error) {
	if len(c.peeked) > 0 {
		b := bufs.Get()
		n := copy(b, c.peeked)
		c.take(n)
		return b, n, nil
	}
	if c.ReadErr != nil && !c.errRead {
		c.errRead = true
		return nil, 0, c.ReadErr
	}
	return rawio.ReadLazy(c.Conn, bufs)
}

// take drops n bytes read for detection, and lets go of their buffer
// once all are: an idle connection keeps none.
func (c *Conn) take(n int) {
	c.peeked = c.peeked[n:]
	if len(c.peeked) == 0 {
		c.peeked = nil
	}
}

// CloseWrite half-closes the connection, as a *net.TCPConn does.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Unwrap is the accepted connection.
func (c *Conn) Unwrap() net.Conn { return c.Conn }

// Under finds the redirected connection under c: c itself, or one that
// wraps it (a lean loop's hand-off to net/http, a guard on its bytes),
// through their Unwrap methods.
func Under(c net.Conn) (*Conn, bool) { return netconn.Find[*Conn](c) }

// Dispatcher sorts the connections of one or more outbound listeners.
type Dispatcher struct {
	cfg  Config
	log  *slog.Logger
	http *chanlistener.Listener

	// detecting counts the connections on their way from Accept to their
	// HTTP server or relay; one accepted as the listener closes may be
	// counted while Close waits (inflight).
	detecting inflight.Counter
}

// New returns a Dispatcher.
func New(cfg Config) *Dispatcher {
	if cfg.DetectTimeout <= 0 {
		cfg.DetectTimeout = DefaultDetectTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Hijacked == nil {
		cfg.Hijacked = func(net.Conn) {}
	}
	return &Dispatcher{cfg: cfg, log: cfg.Logger, http: chanlistener.New("redirected")}
}

// Wrap returns ln with the redirected connections taken out of Accept.
func (d *Dispatcher) Wrap(ln net.Listener) net.Listener { return &listener{Listener: ln, d: d} }

// HTTP is the listener of the redirected connections found to carry
// HTTP/1.x or HTTP/2 with prior knowledge (h2c: its server must speak
// both); their Conn.Original is the destination to dial.
func (d *Dispatcher) HTTP() net.Listener { return d.http }

// Close waits (until ctx is done) for the detections under way, which go on
// to their HTTP server or relay, then closes the HTTP listener. Call it
// once the wrapped listeners are closed.
func (d *Dispatcher) Close(ctx context.Context) {
	select {
	case <-d.detecting.Idle():
	case <-ctx.Done():
	}
	d.http.Close()
}

type listener struct {
	net.Listener
	d *Dispatcher
}

// Accept returns the next connection made to the listener itself; the
// redirected ones go to detection as they come.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		orig, err := OriginalDst(c)
		if err != nil || isSelf(orig, c.LocalAddr()) {
			return c, nil
		}
		if l.d.cfg.Loop != nil && l.d.cfg.Loop(c, orig) {
			continue
		}
		l.d.cfg.Hijacked(c)
		l.d.detecting.Add()
		go l.d.dispatch(c, orig)
	}
}

// isSelf reports whether orig is the listener's own address: a connection
// made to the listener itself, which conntrack knows unchanged.
func isSelf(orig netip.AddrPort, local net.Addr) bool {
	la, ok := local.(*net.TCPAddr)
	if !ok {
		return false
	}
	ip, _ := netip.AddrFromSlice(la.IP)
	// Without zones: OriginalDst gives a link-local address its zone.
	return orig.Port() == uint16(la.Port) && orig.Addr().Unmap().WithZone("") == ip.Unmap()
}

func (d *Dispatcher) dispatch(c net.Conn, orig netip.AddrPort) {
	start := time.Now()
	tc := &Conn{Conn: c, Original: orig}
	if d.cfg.OpaquePorts.Has(orig.Port()) {
		tc.Protocol = OpaquePort
	} else {
		tc.Protocol, tc.SNI, tc.peeked, tc.ReadErr = detect(c, d.cfg.DetectTimeout, d.cfg.LongRequestLines)
	}
	tc.Detect = time.Since(start)
	if d.log.Enabled(context.Background(), slog.LevelDebug) {
		d.log.Debug("redirected connection", "original_dst", orig.String(), "protocol", string(tc.Protocol),
			"sni", tc.SNI, "client", c.RemoteAddr().String(), "detect_ms", float64(tc.Detect.Microseconds())/1000)
	}
	if tc.Protocol == HTTP1 || tc.Protocol == HTTP2 {
		if d.http.Put(tc) {
			d.detecting.Done()
			return
		}
		// Detection ended after the drain closed the HTTP listener: relay
		// the connection rather than drop a request the app has sent.
	}
	tc.taken = sync.OnceFunc(d.detecting.Done)
	defer tc.Taken() // for an OnTCP that never says
	d.cfg.OnTCP(tc)
}

// Detection reads into a small buffer first and takes a whole record's
// only when the first bytes need more to tell (a request line or a
// ClientHello longer than firstPeek): a connection that sends nothing
// waits for up to the detection timeout holding firstPeek bytes, not
// maxPeek (1,024 silent connections at the inbound cap: 2 MiB, not 16).
// What was read is copied out.
const firstPeek = 2048

var (
	firstBufs = sync.Pool{New: func() any { return new([firstPeek]byte) }}
	peekBufs  = sync.Pool{New: func() any { return new([maxPeek]byte) }}
)

// Detect reads the first bytes of c, within timeout, until they tell its
// protocol (Classify). It returns the bytes it read, to be sent on first.
// A read error other than a timeout ends detection as the end of the
// stream does; the socket reports it once, and later reads see an orderly
// end: the Dispatcher keeps it on the Conn, whose Read after the peeked
// bytes returns it, so that a relay passes a reset on as a reset.
func Detect(c net.Conn, timeout time.Duration) (p Protocol, sni string, peeked []byte) {
	p, sni, peeked, _ = detect(c, timeout, false)
	return p, sni, peeked
}

// detect is Detect, with the read error that ended it (rerr: neither the
// timeout nor io.EOF); longLines is Config.LongRequestLines.
func detect(c net.Conn, timeout time.Duration, longLines bool) (p Protocol, sni string, peeked []byte, rerr error) {
	small := firstBufs.Get().(*[firstPeek]byte)
	defer firstBufs.Put(small)
	var big *[maxPeek]byte
	defer func() {
		if big != nil {
			peekBufs.Put(big)
		}
	}()
	buf := small[:]
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	n := 0
	more := true
	for more {
		if n == len(buf) && big == nil {
			big = peekBufs.Get().(*[maxPeek]byte)
			copy(big[:], buf)
			buf = big[:]
		}
		m, err := c.Read(buf[n:])
		n += m
		p, more = Classify(buf[:n])
		if !more {
			break
		}
		if n == maxPeek && longLines && p == HTTP1 {
			break
		}
		if err != nil || n == maxPeek {
			// Not the sidecar's own close (a cap's eviction, the drain).
			if err != nil && err != io.EOF && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, net.ErrClosed) {
				rerr = err
			}
			p = Final(buf[:n])
			break
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	if p == TLS {
		sni, _ = clientHelloSNI(buf[:n])
	}
	if n > 0 {
		peeked = append([]byte(nil), buf[:n]...)
	}
	return p, sni, peeked, rerr
}

// Package connlimit caps and tracks the client connections of a listener,
// and closes them gracefully when the sidecar drains.
//
// A Listener holds at most Max connections at once. Past the cap it does
// not block in Accept (the kernel's backlog would then hold the clients
// in limbo): it accepts the connection and resets it at once, and counts
// it. Its http.Server reports each connection's state through ConnState,
// one atomic store per transition, so that Drain knows which connections
// carry a request and which have been idle since the drain began.
package connlimit

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/internal/netconn"
	"github.com/minimesh/minimesh/internal/rawio"
)

// Listener wraps a TCP listener with a connection cap. Its connections are
// *Conn.
type Listener struct {
	*net.TCPListener
	*shared
	// closed is set by Close, under shared.mu: a connection that Accept
	// took from the kernel as the listener closed is reset rather than
	// registered after a drain's sweep, which runs after Close, has looked
	// (it was left open, its detection or request unwatched).
	closed bool
}

// Close closes the listener. A connection its Accept is taking at that
// moment is reset (admit).
func (l *Listener) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	return l.TCPListener.Close()
}

// shared is the cap and the connections of a Listener and its siblings.
type shared struct {
	max int64

	open    atomic.Int64
	refused atomic.Uint64
	// draining: a drain's sweep has begun; from then on a read records
	// itself in its connection (Conn.drainRead).
	draining atomic.Bool
	// evicted counts the connections closed for a newcomer at the cap
	// (Share), apart from refused: the listener's own limit at work, not
	// a peer's doing.
	evicted atomic.Uint64

	mu      sync.Mutex
	conns   map[*Conn]struct{}
	changed chan struct{} // a token when a connection closes, for Drain

	// Share's: at most perSource places per peer address (bySource,
	// under mu), and evict, a newcomer at the cap takes another
	// connection's place (shared.go), rotate, even among equal shares
	// (Share, not ShareKeepBuffers); stuckGrace, how long a write may
	// wait for its peer before that. now reads the clock (tests set it).
	perSource  int
	bySource   map[netip.Addr]int
	evict      bool
	rotate     bool
	stuckGrace time.Duration
	now        func() time.Time
}

// New wraps ln, holding at most max connections at once (max <= 0: no
// cap).
func New(ln *net.TCPListener, max int) *Listener {
	return &Listener{TCPListener: ln, shared: &shared{max: int64(max), conns: map[*Conn]struct{}{}, changed: make(chan struct{}, 1), now: time.Now}}
}

// Sibling wraps another TCP listener under the same cap: the connections of
// both count together, and Open, Refused, Drain and CloseAll of either
// cover both. Close closes only its own listener. (The outbound listener's
// IPv4 and IPv6 loopback addresses are one listener to the app.)
func (l *Listener) Sibling(ln *net.TCPListener) *Listener {
	return &Listener{TCPListener: ln, shared: l.shared}
}

// Open is the number of connections accepted and not yet closed, tunnels
// (hijacked connections) included.
func (l *Listener) Open() int64 { return l.open.Load() }

// Refused is the number of connections closed at once because the cap was
// reached.
func (l *Listener) Refused() uint64 { return l.refused.Load() }

// Evicted is the number of connections closed to give their place to a
// newcomer at the cap (Share).
func (l *Listener) Evicted() uint64 { return l.evicted.Load() }

// Accept returns the next connection within the cap. Connections past the
// cap are reset as soon as they are accepted, and counted in Refused.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		tc, err := l.AcceptTCP()
		if err != nil {
			return nil, err
		}
		if cc := l.admit(tc); cc != nil {
			return cc, nil
		}
		// Refused, or the listener closed: its next accept says so.
	}
}

// admit registers tc, or resets it (nil) past the cap, or once Close
// has begun.
func (l *Listener) admit(tc *net.TCPConn) *Conn {
	if l.evict {
		return l.acceptShared(tc)
	}
	if n := l.open.Add(1); l.max > 0 && n > l.max {
		l.open.Add(-1)
		l.refuse(tc)
		return nil
	}
	cc := &Conn{TCPConn: tc, l: l, io: rawio.New(tc)}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.open.Add(-1)
		reset(tc)
		return nil
	}
	l.conns[cc] = struct{}{}
	l.mu.Unlock()
	return cc
}

// refuse resets a connection past the cap, and counts it.
func (l *Listener) refuse(tc *net.TCPConn) {
	l.refused.Add(1)
	// A reset, not a FIN: the client learns at once, and no TIME_WAIT is
	// left behind for every refusal of a flood.
	reset(tc)
}

func reset(tc *net.TCPConn) {
	_ = tc.SetLinger(0)
	tc.Close()
}

// acceptShared admits tc under Share's rules, or refuses it (nil).
func (l *Listener) acceptShared(tc *net.TCPConn) *Conn {
	src := source(tc)
	now := l.now()
	var evicted *Conn
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		reset(tc)
		return nil
	}
	if !l.admitSource(src) {
		l.mu.Unlock()
		l.refuse(tc)
		return nil
	}
	if l.max > 0 && l.open.Load() >= l.max {
		if evicted = l.victim(now, src); evicted == nil {
			l.releaseSource(src)
			l.mu.Unlock()
			l.refuse(tc)
			return nil
		}
		// Marked before it is closed: whoever sees the close can tell
		// the cap's doing from a peer's (Evicted).
		evicted.evicted.Store(true)
		l.evicted.Add(1)
	}
	l.open.Add(1)
	cc := &Conn{TCPConn: tc, l: l, io: rawio.New(tc), src: src}
	cc.since.Store(now.UnixNano())
	l.conns[cc] = struct{}{}
	l.mu.Unlock()
	if evicted != nil {
		evicted.Close()
	}
	return cc
}

// ConnState is the http.Server's ConnState hook: it records the state in
// the connection, one atomic store and no lock. A wrapper of the
// connection (a redirected one, one handed from the lean server loop to
// net/http's) reaches it through its Unwrap() net.Conn.
func (l *Listener) ConnState(nc net.Conn, st http.ConnState) {
	if c, ok := netconn.Find[*Conn](nc); ok {
		c.setState(st)
	}
}

// Conn is an accepted connection. It embeds the *net.TCPConn, so that
// CloseWrite, ReadFrom (splice) and SyscallConn work as on the bare
// connection.
type Conn struct {
	*net.TCPConn
	l *Listener
	// state is the last http.ConnState (low 3 bits) and the number of
	// transitions since the connection opened (the rest). Only the
	// connection's own goroutines write it, one after the other.
	state atomic.Uint64
	// release gives the place back once, and every Close waits for it:
	// a second closer (the server's goroutine whose read the drain's
	// close ended) must not return while the place is still held, or the
	// sweep that closed it counts it as left.
	release sync.Once
	// io reads and writes with raw system calls (nil: the TCPConn's own).
	io *rawio.IO
	// src, since and writing are Share's: the peer's address, when the
	// state last changed, and when the write under way began (unix
	// nanoseconds; 0: none).
	src     netip.Addr
	since   atomic.Int64
	writing atomic.Int64
	// evicted: the cap closed it for a newcomer (set before the close).
	evicted atomic.Bool
	// drainRead: Read got bytes since the drain's last look. net/http
	// reports a request only once its header block is complete, and
	// holds what it has read of it in its own buffer, where pending
	// cannot see it: without this, a request whose header lines are
	// still arriving looks idle.
	drainRead atomic.Bool

	// idleSeen and idleSince belong to Drain's goroutine: the state word
	// when the connection was first seen idle, and when.
	idleSeen  uint64
	idleSince time.Time
}

// Read reads from the connection. Outside a drain it costs one atomic
// load more than the raw read (a plain load on amd64 and arm64); during
// one, a read that got bytes tells the sweep that the connection is
// not idle.
func (c *Conn) Read(p []byte) (n int, err error) {
	if c.io == nil {
		n, err = c.TCPConn.Read(p)
	} else {
		n, err = c.io.Read(p)
	}
	if n > 0 && c.l.draining.Load() && !c.drainRead.Load() {
		c.drainRead.Store(true)
	}
	return n, err
}

// Write writes to the connection.
func (c *Conn) Write(p []byte) (int, error) {
	if c.l.evict {
		return c.writeTimed(p)
	}
	if c.io == nil {
		return c.TCPConn.Write(p)
	}
	return c.io.Write(p)
}

// writeTimed is Write where Share asks: it records when the write began,
// so that one stuck waiting for its peer to read can be told (stuck).
func (c *Conn) writeTimed(p []byte) (int, error) {
	c.writing.Store(c.l.now().UnixNano())
	defer c.writing.Store(0)
	if c.io == nil {
		return c.TCPConn.Write(p)
	}
	return c.io.Write(p)
}

// ReadLazy reads into a buffer taken only once there are bytes
// (rawio.ReadLazy): an idle connection waits holding none. It records a
// read for the drain as Read does: the lean server loop reads a request's
// first bytes with it and, as net/http, reports the request (StateActive)
// only once its head is complete, so until then only this record tells
// the sweep that the connection is not idle.
func (c *Conn) ReadLazy(bufs rawio.Buffers) (buf []byte, n int, err error) {
	if c.io == nil {
		buf, n, err = rawio.ReadLazy(c.TCPConn, bufs)
	} else {
		buf, n, err = c.io.ReadLazy(bufs)
	}
	if n > 0 && c.l.draining.Load() && !c.drainRead.Load() {
		c.drainRead.Store(true)
	}
	return buf, n, err
}

func (c *Conn) setState(st http.ConnState) {
	v := c.state.Load()
	c.state.Store((v>>3+1)<<3 | uint64(st)&7)
	if c.l.evict {
		c.since.Store(c.l.now().UnixNano()) // only where Share asks: a clock read
	}
}

// State is the connection's last http.ConnState (StateNew until the
// server reports one).
func (c *Conn) State() http.ConnState { return http.ConnState(c.state.Load() & 7) }

// Evicted reports whether the cap closed c to give its place to a
// newcomer (Share), rather than its peer or its owner closing it.
func (c *Conn) Evicted() bool { return c.evicted.Load() }

// Evicted reports whether nc, or the *Conn it wraps (through Unwrap
// methods), was closed by the cap for a newcomer: its owner records that
// end as the listener's own limit at work, not as a peer's reset.
func Evicted(nc net.Conn) bool {
	c, ok := netconn.Find[*Conn](nc)
	return ok && c.Evicted()
}

// Close closes the connection and releases its place under the cap.
func (c *Conn) Close() error {
	err := c.TCPConn.Close()
	c.release.Do(func() {
		c.l.open.Add(-1)
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.releaseSource(c.src)
		c.l.mu.Unlock()
		select {
		case c.l.changed <- struct{}{}:
		default:
		}
	})
	return err
}

// drainTick is how often Drain looks at the connections.
const drainTick = 50 * time.Millisecond

// Drain closes the connections as they become idle, and returns when no
// connection is left but hijacked ones (tunnels, WebSockets: their owner
// drains them), or when ctx is done; it returns the number left.
//
// The listener should be closed and the handler should answer with
// "Connection: close" first: a connection carrying a request then closes
// after its answer, and the client learns from that answer not to send
// another. Drain itself closes only a connection that has been idle (or
// new, without a request) for grace since the drain began, with nothing
// waiting to be read and nothing read meanwhile: an idle keep-alive
// connection is closed only when its client has had grace to use it and
// did not, so that a request already on the wire, or one whose header
// lines are still arriving (the server reports a request only once its
// header block is in), is not cut off. A client that trickles a header
// forever is still cut: by the server's ReadHeaderTimeout, or when ctx
// is done.
func (l *Listener) Drain(ctx context.Context, grace time.Duration) int {
	t := time.NewTicker(drainTick)
	defer t.Stop()
	for {
		left := l.sweep(time.Now(), grace)
		if left == 0 {
			return 0
		}
		select {
		case <-ctx.Done():
			return left
		case <-t.C:
		case <-l.changed:
		}
	}
}

// sweep closes the connections idle for grace at now and returns the
// number of connections left, not counting hijacked ones.
func (l *Listener) sweep(now time.Time, grace time.Duration) int {
	if !l.draining.Load() {
		l.draining.Store(true)
	}
	l.mu.Lock()
	conns := make([]*Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	left := 0
	for _, c := range conns {
		v := c.state.Load()
		switch http.ConnState(v & 7) {
		case http.StateHijacked:
			continue
		case http.StateNew, http.StateIdle:
			// A read restarts the idle clock once: the flag is cleared
			// at every look. Looked at again after pending, which cannot
			// see the bytes of a read that ran meanwhile.
			read := c.drainRead.Swap(false)
			if c.idleSince.IsZero() || c.idleSeen != v || read {
				c.idleSeen, c.idleSince = v, now
			} else if now.Sub(c.idleSince) >= grace && !pending(c.TCPConn) && !c.drainRead.Load() {
				c.Close()
				continue
			}
		default:
			c.idleSince = time.Time{}
		}
		left++
	}
	return left
}

// CloseAll closes every connection, hijacked ones included.
func (l *Listener) CloseAll() {
	l.mu.Lock()
	conns := make([]*Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

package connlimit

import (
	"net"
	"net/http"
	"net/netip"
	"time"
)

// A listener that anyone on the pod network reaches (the admin port: the
// kubelet's probes, Prometheus, a person) must not be shut by peers
// holding every place under its cap: the kubelet would then restart the
// sidecar, or take the pod out of its Service. Share guards such a
// listener so, as nginx keeps its worker's connections, and more:
//
//   - each peer address may hold at most perSource of the places, so
//     one peer (a pod) cannot take them all;
//   - at the cap, a new connection takes the place of another (victim):
//     one that waits for a request (idle between requests, or new and
//     silent for newGrace; a kubelet writes its probe at once) and has
//     nothing unread; else one whose write has been stuck for
//     stuckGrace (its peer does not read: a pipeline of requests whose
//     answers are never read held the port shut, before 2026-12-05);
//     else one of the peer address that holds the most places, when it
//     holds more than the newcomer's address then would (a fair share:
//     4 pods holding 16 places each no longer shut out a fifth address,
//     the kubelet's); else, for a newcomer on loopback (the pod itself),
//     the longest-held connection from the network;
//   - else, where no address holds more places than the newcomer's (its
//     own counted), the connection held longest in its state among those
//     of the addresses holding as many (evenShare): the places rotate.
//     Before 2026-12-06 such a newcomer was refused, so that 64 addresses
//     each keeping one connection busy (a request body trickled in, its
//     answers read slowly) shut the kubelet and Prometheus out for as
//     long as they kept at it. Rotating, the newest connection (a probe)
//     is the last one taken: it is answered in milliseconds, long before
//     64 newer connections come.
//
// The fair share cannot fight itself: each eviction by it narrows the gap
// between two addresses' shares; the rotation among equal shares gives
// no address more places than another. A network newcomer never takes a
// loopback connection's place but by the fair share. The outbound
// listener serves the pod's own app, and keeps the plain cap; the
// inbound one, reached by every caller of the pod, shares its places too
// (ShareKeepBuffers), without the rotation.
func (l *Listener) Share(perSource int) {
	l.ShareKeepBuffers(perSource)
	l.rotate = true
	if l.TCPListener != nil {
		setBuffers(l.TCPListener, ShareSocketBuffer)
	}
}

// ShareKeepBuffers is Share without its small socket buffers
// (ShareSocketBuffer) and without its rotation among equal shares: for a
// listener whose connections carry the app's own traffic (the inbound
// listener's callers), whose uploads and downloads 32 KiB buffers would
// slow, and where the kernel's autotuning stays; and whose connections
// may rightly live for hours (a database client, a WebSocket), so that
// with every caller holding as many places, a newcomer is refused rather
// than the longest-lived connection cut. The places, the per-address
// share and the other evictions are Share's.
func (l *Listener) ShareKeepBuffers(perSource int) {
	l.perSource = perSource
	l.evict = true
	if l.bySource == nil {
		l.bySource = map[netip.Addr]int{}
	}
	if l.stuckGrace <= 0 {
		l.stuckGrace = DefaultStuckGrace
	}
}

// ShareSocketBuffer is the kernel's send and receive buffer (SO_SNDBUF,
// SO_RCVBUF; Linux doubles it for its bookkeeping) of a shared
// listener's connections, set on the listener for its connections to
// inherit. Autotuned, a send buffer grows to net.ipv4.tcp_wmem's 4 MiB:
// a peer that pipelines requests and never reads had about 300 answers
// of /metrics (9.5 KB) made and queued per connection before its writes
// stuck (and 64 such connections kept the CPU busy making them). At
// 32 KiB a connection whose peer does not read holds at most 128 KiB of
// kernel buffers and gets a handful of answers before its write sticks,
// and a reading peer still gets 64 KB per round trip.
const ShareSocketBuffer = 32 << 10

// SetStuckGrace sets how long a write may be stuck before a newcomer at
// the cap may take its connection's place (0: DefaultStuckGrace). Call it
// before Accept.
func (l *Listener) SetStuckGrace(d time.Duration) {
	if d <= 0 {
		d = DefaultStuckGrace
	}
	l.stuckGrace = d
}

// newGrace is how long a new connection may stay silent before a
// newcomer may take its place at the cap.
const newGrace = time.Second

// DefaultStuckGrace is how long one write to a connection may wait for
// its peer to read before a newcomer at the cap may take the
// connection's place. A scrape or a probe reads its answer as it comes:
// one write of a few KiB waits microseconds for it.
const DefaultStuckGrace = time.Second

// source is the peer address a connection counts against.
func source(tc *net.TCPConn) netip.Addr {
	if a, ok := tc.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// admitSource takes one of src's places; false when it has none left.
// Under Share every address's places are counted (for the fair share),
// capped when perSource > 0. The caller holds mu.
func (l *Listener) admitSource(src netip.Addr) bool {
	if l.bySource == nil {
		return true
	}
	if l.perSource > 0 && l.bySource[src] >= l.perSource {
		return false
	}
	l.bySource[src]++
	return true
}

// releaseSource gives back src's place. The caller holds mu.
func (l *Listener) releaseSource(src netip.Addr) {
	if l.bySource == nil {
		return
	}
	if n := l.bySource[src] - 1; n > 0 {
		l.bySource[src] = n
	} else {
		delete(l.bySource, src)
	}
}

// victim returns the connection whose place a newcomer from src takes at
// the cap, at now, by Share's rules in their order; nil if none. src's
// count already holds the newcomer. The caller holds mu.
func (l *Listener) victim(now time.Time, src netip.Addr) *Conn {
	if c := l.waited(now); c != nil {
		return c
	}
	if c := l.stuck(now); c != nil {
		return c
	}
	if c := l.overShare(src); c != nil {
		return c
	}
	if src.IsLoopback() {
		if c := l.oldest(func(c *Conn) bool { return !c.src.IsLoopback() }); c != nil {
			return c
		}
	}
	if l.rotate {
		return l.evenShare(src)
	}
	return nil
}

// evenShare returns, when no address holds more places than src
// (newcomer included; overShare found none), the connection in its state
// longest among those of the addresses holding as many: src's own, and
// every address's when src holds only the newcomer's place. A loopback
// connection only for a newcomer on loopback. nil if none. The caller
// holds mu.
func (l *Listener) evenShare(src netip.Addr) *Conn {
	k, local := l.bySource[src], src.IsLoopback()
	return l.oldest(func(c *Conn) bool {
		return l.bySource[c.src] >= k && (local || !c.src.IsLoopback())
	})
}

// waited returns the connection that has waited longest for a request,
// at now: idle, or new and silent for newGrace, with nothing to read;
// nil if none. The caller holds mu.
func (l *Listener) waited(now time.Time) *Conn {
	var skip map[*Conn]bool
	for {
		var oldest *Conn
		var since int64
		for c := range l.conns {
			s := c.since.Load()
			switch c.State() {
			case http.StateIdle:
			case http.StateNew:
				if now.UnixNano()-s < int64(newGrace) {
					continue
				}
			default:
				continue
			}
			if skip[c] {
				continue
			}
			if oldest == nil || s < since {
				oldest, since = c, s
			}
		}
		if oldest == nil || !pending(oldest.TCPConn) {
			return oldest
		}
		// A request on its way: that one keeps its place; the next
		// waiting one may not have one.
		if skip == nil {
			skip = map[*Conn]bool{}
		}
		skip[oldest] = true
	}
}

// stuck returns the connection whose write has waited longest for its
// peer to read, if for stuckGrace at now; nil if none. The caller holds
// mu.
func (l *Listener) stuck(now time.Time) *Conn {
	var worst *Conn
	var since int64
	for c := range l.conns {
		w := c.writing.Load()
		if w == 0 || now.UnixNano()-w < int64(l.stuckGrace) {
			continue
		}
		if worst == nil || w < since {
			worst, since = c, w
		}
	}
	return worst
}

// overShare returns the connection, in its state longest, of the peer
// address holding the most places, if that is more than src holds
// (newcomer included); nil if none. The caller holds mu.
func (l *Listener) overShare(src netip.Addr) *Conn {
	var top netip.Addr
	found, most := false, l.bySource[src]
	for a, n := range l.bySource {
		if n > most {
			top, most, found = a, n, true
		}
	}
	if !found {
		return nil
	}
	return l.oldest(func(c *Conn) bool { return c.src == top })
}

// oldest returns the connection for which ok holds that has been in its
// state longest; nil if none. The caller holds mu.
func (l *Listener) oldest(ok func(*Conn) bool) *Conn {
	var old *Conn
	var since int64
	for c := range l.conns {
		if s := c.since.Load(); ok(c) && (old == nil || s < since) {
			old, since = c, s
		}
	}
	return old
}

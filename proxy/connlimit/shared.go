package connlimit

import (
	"net"
	"net/http"
	"net/netip"
	"time"
)

// A listener that anyone on the pod network reaches (the admin port: the
// kubelet's probes, Prometheus, a person) must not be shut by one peer
// holding every place under its cap: the kubelet would then restart the
// sidecar. Share guards such a listener two ways, as nginx keeps its
// worker's connections:
//
//   - each peer address may hold at most perSource of the places, so
//     one peer (a pod) cannot take them all;
//   - at the cap, a new connection takes the place of the one that has
//     waited longest without a request: idle between requests, or new and
//     silent for newGrace (a kubelet writes its probe at once). One with
//     bytes waiting to be read is left alone.
//
// A connection in the middle of a request holds its place until it ends
// or its header time runs out. The outbound and inbound listeners serve
// the pod's own app, and keep the plain cap.
func (l *Listener) Share(perSource int) {
	l.perSource = perSource
	l.evict = true
	if l.bySource == nil {
		l.bySource = map[netip.Addr]int{}
	}
}

// newGrace is how long a new connection may stay silent before a
// newcomer may take its place at the cap.
const newGrace = time.Second

// source is the peer address a connection counts against.
func source(tc *net.TCPConn) netip.Addr {
	if a, ok := tc.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// admitSource takes one of src's places; false when it has none left.
// The caller holds mu.
func (l *Listener) admitSource(src netip.Addr) bool {
	if l.perSource <= 0 {
		return true
	}
	if l.bySource[src] >= l.perSource {
		return false
	}
	l.bySource[src]++
	return true
}

// releaseSource gives back src's place. The caller holds mu.
func (l *Listener) releaseSource(src netip.Addr) {
	if l.perSource <= 0 {
		return
	}
	if n := l.bySource[src] - 1; n > 0 {
		l.bySource[src] = n
	} else {
		delete(l.bySource, src)
	}
}

// waited returns the connection that has waited longest for a request,
// at now: idle, or new and silent for newGrace, with nothing to read;
// nil if none. The caller holds mu.
func (l *Listener) waited(now time.Time) *Conn {
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
		if oldest == nil || s < since {
			oldest, since = c, s
		}
	}
	if oldest != nil && pending(oldest.TCPConn) {
		return nil // a request on its way: the newcomer is refused instead
	}
	return oldest
}

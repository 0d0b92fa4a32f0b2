package inbound

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// localAddrs is the set of the pod's own addresses that an inbound
// connection may have been addressed to: the host's interface addresses,
// loopback excluded. A REDIRECT keeps the packet's destination as the
// original destination, so a redirected connection whose original
// destination is not in this set was addressed to another host and routed
// through the pod: relaying it would make the sidecar an open relay (and a
// port scanner) to the kube API, the cloud metadata server and every
// other namespace, past NetworkPolicy at the source. Loopback is never
// the pod's address from outside: an app listening on 127.0.0.1 chose not
// to be reached from the network.
//
// The set is read with one atomic load and one map lookup (the hit path:
// no lock, no syscall). A miss re-reads the interfaces at most once per
// refresh interval, so that an address the pod gained later still works
// while a flood of foreign destinations costs one syscall a second.
type localAddrs struct {
	set atomic.Pointer[map[netip.Addr]struct{}]

	mu    sync.Mutex
	last  time.Time // the last read of the interfaces (mu)
	every time.Duration
	now   func() time.Time
	list  func() ([]net.Addr, error)
}

// refreshInterval bounds how often a miss re-reads the interfaces.
const refreshInterval = time.Second

func newLocalAddrs() *localAddrs {
	return &localAddrs{every: refreshInterval, now: time.Now, list: net.InterfaceAddrs}
}

// has reports whether a is one of the pod's own, non-loopback addresses.
func (l *localAddrs) has(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	if m := l.set.Load(); m != nil {
		if _, ok := (*m)[a]; ok {
			return true
		}
	}
	if !a.IsValid() || a.IsLoopback() || a.IsUnspecified() {
		return false // never the pod's address, whatever the interfaces say
	}
	return l.refresh(a)
}

// refresh re-reads the interfaces unless that was done less than
// l.every ago, and reports whether a is in the set then.
func (l *localAddrs) refresh(a netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := l.now(); l.last.IsZero() || now.Sub(l.last) >= l.every {
		l.last = now
		if addrs, err := l.list(); err == nil {
			m := make(map[netip.Addr]struct{}, len(addrs))
			for _, na := range addrs {
				var ip net.IP
				switch v := na.(type) {
				case *net.IPNet:
					ip = v.IP
				case *net.IPAddr:
					ip = v.IP
				}
				if x, ok := netip.AddrFromSlice(ip); ok {
					if x = x.Unmap(); !x.IsLoopback() && !x.IsUnspecified() {
						m[x] = struct{}{}
					}
				}
			}
			l.set.Store(&m)
		} // on an error the set stays as it was: nothing new is let in
	}
	m := l.set.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[a]
	return ok
}

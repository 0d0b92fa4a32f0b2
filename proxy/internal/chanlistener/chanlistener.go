// Package chanlistener holds a net.Listener whose connections are handed
// to it over a channel rather than accepted from a socket: how a server
// (net/http's, say) is given connections that something else accepted
// and looked at first (proxy/transparent's redirected connections,
// proxy/leanhttp's handed-off ones).
package chanlistener

import (
	"net"
	"sync"
)

// Listener is a net.Listener fed by Put.
type Listener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	addr   addr
}

// New is a listener whose Addr's String is name (its Network is "tcp").
func New(name string) *Listener {
	return &Listener{conns: make(chan net.Conn), closed: make(chan struct{}), addr: addr(name)}
}

// Put hands c to the next Accept, waiting for one; it returns false,
// without handing c, once the listener is closed. A closed listener
// refuses c even when an Accept is waiting (the closed check comes
// first), so after Close returns no connection is handed over.
func (l *Listener) Put(c net.Conn) bool {
	select {
	case <-l.closed:
		return false
	default:
	}
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	}
}

// Accept returns the next connection Put hands over, or net.ErrClosed
// once the listener is closed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close ends Accept and Put; it may be called more than once.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr is the name the listener was made with.
func (l *Listener) Addr() net.Addr { return l.addr }

type addr string

func (addr) Network() string  { return "tcp" }
func (a addr) String() string { return string(a) }

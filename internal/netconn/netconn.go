// Package netconn finds what a wrapped net.Conn holds. The sidecar wraps
// its connections in layers (a redirected connection's original
// destination, a guard on its bytes, the lean loop's hand-off to
// net/http, raw reads and writes), each of which gives the one under it
// through an Unwrap() net.Conn method, as errors.Unwrap does for errors.
// Code that needs the socket, a half-close or its own wrapper finds it
// here, in one walk.
package netconn

import "net"

// Find returns the first of c and the connections it wraps, outermost
// first, that is a T: a concrete wrapper (*transparent.Conn) or a method
// set (interface{ CloseWrite() error }).
func Find[T any](c net.Conn) (T, bool) {
	for c != nil {
		if t, ok := c.(T); ok {
			return t, true
		}
		u, ok := c.(interface{ Unwrap() net.Conn })
		if !ok {
			break
		}
		c = u.Unwrap()
	}
	var zero T
	return zero, false
}

// CloseWrite half-closes c, or the first connection under it that can
// be: the peer reads an orderly end and may still send. A connection
// with none that can is closed.
func CloseWrite(c net.Conn) error {
	if cw, ok := Find[interface{ CloseWrite() error }](c); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

//go:build !linux

package refused

import "net"

// Listen listens on addr. Outside Linux, HoldPort cannot keep its port
// between listeners.
func Listen(addr string) (net.Listener, error) { return net.Listen("tcp4", addr) }

// HoldPort keeps nothing outside Linux: another process may take the
// port between a listener's close and the next Listen.
func HoldPort(addr string) (release func(), err error) { return func() {}, nil }

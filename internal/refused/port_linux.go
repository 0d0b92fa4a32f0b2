package refused

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listen listens on addr ("127.0.0.1:0" for any port) so that the port
// can be kept between this listener and the next: HoldPort binds it
// beside the listener, which then closes, and the next Listen on the
// same address binds beside the hold, which then goes. Connections are
// refused in between, and no other socket can take the port at any
// moment.
//
// Why it works (Linux): the listener and the hold both set SO_REUSEPORT,
// which lets sockets of one user share a port; the hold does not set
// SO_REUSEADDR, so a socket of anyone else's (Go's listeners set
// SO_REUSEADDR only) cannot bind beside it, and the closed listener's
// connections in TIME_WAIT, which had SO_REUSEPORT too, do not stand in
// the way of either.
func Listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	return lc.Listen(context.Background(), "tcp4", addr)
}

// HoldPort keeps addr's port, a port of Listen's, until release:
// bound, never listening. release may be called more than once.
func HoldPort(addr string) (release func(), err error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return nil, fmt.Errorf("refused: hold %q: want an IPv4 address and port", addr)
	}
	fd, err := socket()
	if err != nil {
		return nil, err
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("refused: SO_REUSEPORT: %w", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("refused: bind %s: %w", addr, err)
	}
	var once sync.Once
	return func() { once.Do(func() { syscall.Close(fd) }) }, nil
}

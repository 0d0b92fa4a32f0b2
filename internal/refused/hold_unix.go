//go:build unix

package refused

import (
	"fmt"
	"net/netip"
	"sync"
	"syscall"
)

// Hold returns a loopback address where connections are refused until
// release is called: the port of a TCP socket bound there, never
// listening. The socket does not set SO_REUSEADDR, so no listener can
// bind the port beside it (Go's listeners set it, and Linux lets two
// sockets that both set it share a port none of them listens on).
// release may be called more than once: the socket is closed once (a
// second close could close another file given the same number).
func Hold() (addr string, release func(), err error) {
	fd, err := socket()
	if err != nil {
		return "", nil, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		return "", nil, fmt.Errorf("refused: bind 127.0.0.1:0: %w", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return "", nil, fmt.Errorf("refused: getsockname: %w", err)
	}
	in4, ok := sa.(*syscall.SockaddrInet4)
	if !ok {
		syscall.Close(fd)
		return "", nil, fmt.Errorf("refused: bound to %T, want an IPv4 address", sa)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port))
	var once sync.Once
	return ap.String(), func() { once.Do(func() { syscall.Close(fd) }) }, nil
}

// socket makes a TCP socket, close-on-exec. Under ForkLock, as package
// net makes its sockets where it cannot ask for close-on-exec at once: a
// process started in between (tests start sidecars) would inherit the
// socket and keep the port past release.
func socket() (int, error) {
	syscall.ForkLock.RLock()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return 0, fmt.Errorf("refused: socket: %w", err)
	}
	return fd, nil
}

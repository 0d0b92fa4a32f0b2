//go:build unix

package connlimit

import (
	"net"
	"syscall"
)

// pending reports whether bytes have arrived on c that nobody has read
// yet: a request on its way in, on a connection the server still sees as
// idle. It peeks, so the bytes stay for the server.
func pending(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var n int
	var b [1]byte
	_ = rc.Control(func(fd uintptr) {
		n, _, _ = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	})
	return n > 0
}

// setBuffers sets ln's send and receive buffers to n bytes each, for the
// connections it accepts to inherit (best effort).
func setBuffers(ln *net.TCPListener, n int) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, n)
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
	})
}

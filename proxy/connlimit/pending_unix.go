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

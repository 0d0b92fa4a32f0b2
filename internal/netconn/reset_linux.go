package netconn

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// WasReset reports whether c's TCP connection has been reset, read where
// a read returned an end of stream. The kernel reports a reset's error
// to one system call only: when a write on the same socket took it, the
// next read returns 0 bytes, which reads as an orderly end, and a relay
// would pass a FIN on for a reset. The connection's state tells them
// apart while this side has not half-closed it: a peer's FIN leaves it in
// CLOSE_WAIT, a reset in CLOSE (once this side has sent its own FIN, a
// peer's FIN closes it too: the caller must know it has not). One
// getsockopt(2), at the end of a stream only.
func WasReset(c net.Conn) bool {
	sc, ok := Find[syscall.Conn](c)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	reset := false
	_ = rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			reset = info.State == tcpClose
		}
	})
	return reset
}

// tcpClose is TCP_CLOSE of the kernel's tcp_states.h.
const tcpClose = 7

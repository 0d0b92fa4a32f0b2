package outbound

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// setUserTimeout sets the socket's TCP_USER_TIMEOUT (h2UpstreamUserTimeout).
func setUserTimeout(rc syscall.RawConn, d time.Duration) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
	}); err != nil {
		return err
	}
	return serr
}

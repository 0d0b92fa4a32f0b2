//go:build !linux

package outbound

import (
	"syscall"
	"time"
)

// setUserTimeout does nothing where TCP_USER_TIMEOUT is Linux's own: the
// sidecar runs in Linux pods; elsewhere (a developer's laptop) TCP
// keepalive and H2UpstreamPingAfter's PING find a dead upstream, later.
func setUserTimeout(syscall.RawConn, time.Duration) error { return nil }

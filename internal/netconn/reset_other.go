//go:build !linux

package netconn

import "net"

// WasReset is the Linux one's (reset_linux.go); elsewhere an end of
// stream is taken as it reads.
func WasReset(net.Conn) bool { return false }

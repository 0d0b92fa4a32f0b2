//go:build !unix

package connlimit

import "net"

// pending cannot peek here: an idle connection is taken as idle.
func pending(*net.TCPConn) bool { return false }

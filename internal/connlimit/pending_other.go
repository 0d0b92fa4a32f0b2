//go:build !unix

package connlimit

import "net"

// pending cannot peek here: an idle connection is taken as idle.
func pending(*net.TCPConn) bool { return false }

// setBuffers leaves the buffers to the system here.
func setBuffers(*net.TCPListener, int) {}

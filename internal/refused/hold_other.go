//go:build !unix

package refused

import "net"

// Hold returns a loopback address where nothing listens. Without a bound
// socket to keep the port, another process may listen there later.
func Hold() (addr string, release func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr = ln.Addr().String()
	ln.Close()
	return addr, func() {}, nil
}

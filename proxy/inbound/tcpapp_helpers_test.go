package inbound

import (
	"net"
	"net/netip"
	"testing"
)

// tcpApp is an app on loopback that runs serve on each connection it
// accepts, closing the connection when serve returns; it stops with the
// test. Its address is returned.
func tcpApp(t *testing.T, serve func(c net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

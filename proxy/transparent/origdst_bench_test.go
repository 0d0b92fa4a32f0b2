package transparent

import (
	"net"
	"testing"
)

// BenchmarkOriginalDst is the cost each accepted connection pays on the
// outbound listener for telling redirected connections apart: one
// getsockopt(2) (here, on a connection conntrack does not know).
func BenchmarkOriginalDst(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	c, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		orig, err := OriginalDst(c)
		if err == nil && !isSelf(orig, c.LocalAddr()) {
			b.Fatal("redirected?")
		}
	}
}

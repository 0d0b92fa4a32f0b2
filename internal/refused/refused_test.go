package refused

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestRefusedAndKept: a connection to the address is refused, no listener
// can take the port while it is held (Go's listeners set SO_REUSEADDR,
// the case a plain bind check would miss), and once released the port is
// free again.
func TestRefusedAndKept(t *testing.T) {
	addr, release, err := Hold()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil {
			c.Close()
			t.Fatalf("dial %d to %s connected, want refused", i, addr)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial %d to %s: %v, want connection refused", i, addr, err)
		}
	}
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		t.Fatalf("listen on held %s succeeded, want address in use", addr)
	} else if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("listen on held %s: %v, want address in use", addr, err)
	}
	release()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on released %s: %v", addr, err)
	}
	defer ln.Close()
	release() // again: closes nothing, the listener above stays
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial the listener after a second release: %v", err)
	}
	c.Close()
}

// TestAddr: the testing form holds the address until the test's end.
func TestAddr(t *testing.T) {
	var addr string
	t.Run("held", func(t *testing.T) {
		addr = Addr(t)
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			t.Fatalf("listen on %s during the test succeeded", addr)
		}
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s after the test: %v", addr, err)
	}
	ln.Close()
}

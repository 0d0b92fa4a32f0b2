package refused

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestPortKeptBetweenListeners: a server on a port of Listen's turns off
// and on. While off, connections are refused and a listener of anyone
// else's (net.Listen: SO_REUSEADDR) cannot take the port, even though the
// closed listener left connections in TIME_WAIT; the next Listen binds
// beside the hold and serves.
func TestPortKeptBetweenListeners(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	// A connection the server closes first: TIME_WAIT on the port.
	go func(ln net.Listener) {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}(ln)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, c) // until the server's close
	c.Close()

	for turn := range 3 {
		release, err := HoldPort(addr)
		if err != nil {
			t.Fatalf("turn %d: hold beside the listener: %v", turn, err)
		}
		ln.Close()
		if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			c.Close()
			t.Fatalf("turn %d: dial %s while held connected, want refused", turn, addr)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("turn %d: dial %s while held: %v, want connection refused", turn, addr, err)
		}
		if other, err := net.Listen("tcp", addr); err == nil {
			other.Close()
			t.Fatalf("turn %d: another listener took held %s", turn, addr)
		} else if !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("turn %d: another listener on held %s: %v, want address in use", turn, addr, err)
		}
		if ln, err = Listen(addr); err != nil {
			t.Fatalf("turn %d: listen again beside the hold: %v", turn, err)
		}
		release()
		release() // again: closes nothing
		go func(ln net.Listener) {
			if c, err := ln.Accept(); err == nil {
				_, _ = c.Write([]byte("on"))
				c.Close()
			}
		}(ln)
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("turn %d: dial the listener again: %v", turn, err)
		}
		b, _ := io.ReadAll(c)
		c.Close()
		if string(b) != "on" {
			t.Fatalf("turn %d: the listener again answered %q, want \"on\"", turn, b)
		}
	}
	ln.Close()
}

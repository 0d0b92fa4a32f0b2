package chanlistener

import (
	"errors"
	"net"
	"testing"
)

func TestListener(t *testing.T) {
	l := New("redirected")
	if l.Addr().String() != "redirected" || l.Addr().Network() != "tcp" {
		t.Fatalf("addr %s %s", l.Addr().Network(), l.Addr())
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	got := make(chan net.Conn)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	if !l.Put(a) {
		t.Fatal("Put on an open listener refused")
	}
	if c := <-got; c != a {
		t.Fatalf("accepted %v, want %v", c, a)
	}
	l.Close()
	l.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	// After Close, Put refuses even with an Accept waiting.
	go l.Accept()
	for range 100 {
		if l.Put(b) {
			t.Fatal("Put after Close handed the connection over")
		}
	}
}

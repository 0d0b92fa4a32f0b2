package connlimit

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestAcceptAsTheListenerCloses: a connection Accept takes from the
// kernel as the listener closes is reset, not registered after the
// drain's sweep (which runs after Close) has looked: registered then, it
// was left open with nobody to close it (its detection waited out its
// 10 s, a drain's test saw it; before, admit registered it whatever).
func TestAcceptAsTheListenerCloses(t *testing.T) {
	for _, share := range []bool{false, true} {
		l := listen(t, 8)
		if share {
			l.Share(4)
		}
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tc, err := l.AcceptTCP() // the kernel's accept, as Accept's
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		if cc := l.admit(tc); cc != nil {
			t.Errorf("share %v: a connection accepted as the listener closed was registered", share)
		}
		if n := l.Open(); n != 0 {
			t.Errorf("share %v: %d connections open, want 0", share, n)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second)) // bounds a failing test only
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("share %v: the client read %v, want a reset", share, err)
		}
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("share %v: Accept after Close: %v, want net.ErrClosed", share, err)
		}
	}
}

package connlimit

import (
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestShareRotates: at the cap, with as many addresses as places, each
// holding one busy connection (none waiting, none stuck, no address over
// its share), Share gives a newcomer from another address the place of
// the connection busy longest, marks it evicted and counts it; under
// ShareKeepBuffers (the inbound listener's rules) the newcomer is
// refused. Before 2026-12-06 Share refused it too: 64 addresses keeping
// one connection busy each shut the admin port to the kubelet.
func TestShareRotates(t *testing.T) {
	const max = 4
	for _, tc := range []struct {
		name  string
		share func(*Listener, int)
		in    bool // the newcomer gets in
	}{
		{"Share", (*Listener).Share, true},
		{"ShareKeepBuffers", (*Listener).ShareKeepBuffers, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newSharedRigWith(t, max, 0, tc.share)
			var clients []net.Conn
			var held []*Conn
			for i := range max {
				c, sc := r.dialFrom(t, fmt.Sprintf("127.0.1.%d", i+1))
				if sc == nil {
					t.Fatal("a connection within the cap was refused")
				}
				r.l.ConnState(sc, http.StateActive) // busy: a request under way
				r.advance(time.Second)              // held[0] is busy longest
				clients, held = append(clients, c), append(held, sc)
			}
			_, nc := r.dialFrom(t, "127.0.0.9")
			if (nc != nil) != tc.in {
				t.Fatalf("newcomer admitted %v, want %v", nc != nil, tc.in)
			}
			wantEvicted, wantRefused := uint64(0), uint64(1)
			if tc.in {
				wantEvicted, wantRefused = 1, 0
				if !refusedConn(clients[0]) {
					t.Error("the connection busy longest was not closed for the newcomer")
				}
			}
			for i, c := range held {
				if want := tc.in && i == 0; c.Evicted() != want || Evicted(wrapped{c}) != want {
					t.Errorf("connection %d: Evicted %v (through a wrapper %v), want %v", i, c.Evicted(), Evicted(wrapped{c}), want)
				}
			}
			if r.l.Evicted() != wantEvicted || r.l.Refused() != wantRefused {
				t.Errorf("evicted %d, refused %d; want %d and %d", r.l.Evicted(), r.l.Refused(), wantEvicted, wantRefused)
			}
			if r.l.Open() != max {
				t.Errorf("open %d, want the cap, %d", r.l.Open(), max)
			}
		})
	}
}

// wrapped is a connection wrapper as the sidecar's (transparent.Conn, a
// guard): Evicted finds the *Conn through its Unwrap.
type wrapped struct{ net.Conn }

func (w wrapped) Unwrap() net.Conn { return w.Conn }

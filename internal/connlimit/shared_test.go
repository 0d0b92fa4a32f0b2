package connlimit

import (
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// sharedRig is a listener under Share's rules with an accept loop and a
// clock the test moves.
type sharedRig struct {
	l        *Listener
	accepted chan *Conn
	mu       sync.Mutex
	now      time.Time
}

// newSharedRig is a sharedRig whose listener shares its places with
// ShareKeepBuffers: the rules the tests look at, without Share's rotation
// among equal shares, under which every newcomer on loopback among
// loopback connections gets in (newSharedRigWith and Share:
// TestShareRotates).
func newSharedRig(t *testing.T, max, perSource int) *sharedRig {
	return newSharedRigWith(t, max, perSource, (*Listener).ShareKeepBuffers)
}

// newSharedRigWith is newSharedRig with share (Share or
// ShareKeepBuffers) setting the listener's rules.
func newSharedRigWith(t *testing.T, max, perSource int, share func(*Listener, int)) *sharedRig {
	t.Helper()
	r := &sharedRig{l: listen(t, max), accepted: make(chan *Conn, 16), now: time.Unix(1000, 0)}
	r.l.now = func() time.Time { r.mu.Lock(); defer r.mu.Unlock(); return r.now }
	share(r.l, perSource)
	go func() {
		for {
			c, err := r.l.Accept()
			if err != nil {
				return
			}
			r.accepted <- c.(*Conn)
		}
	}()
	return r
}

func (r *sharedRig) advance(d time.Duration) { r.mu.Lock(); r.now = r.now.Add(d); r.mu.Unlock() }

// dialFrom connects from a loopback address of the test's choosing and
// returns the client's end and, unless refused, the server's: whichever
// comes first, the accept or the client's read of the refusal.
func (r *sharedRig) dialFrom(t *testing.T, from string) (net.Conn, *Conn) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", r.l.Addr().String())
	if err != nil {
		return nil, nil // reset before connect returned
	}
	t.Cleanup(func() { c.Close() })
	refused := make(chan bool, 1)
	go func() { refused <- refusedConn(c) }()
	select {
	case sc := <-r.accepted:
		return c, sc
	case ok := <-refused:
		if !ok {
			t.Fatalf("a connection from %s was neither accepted nor refused within 5s", from)
		}
		return c, nil
	}
}

// TestSharePerSource: one peer address holds at most perSource places;
// another address still gets in, and a place given back is taken again.
func TestSharePerSource(t *testing.T) {
	r := newSharedRig(t, 10, 2)
	_, a := r.dialFrom(t, "127.0.0.1")
	_, b := r.dialFrom(t, "127.0.0.1")
	if a == nil || b == nil {
		t.Fatal("the first two connections from one address were refused")
	}
	if _, c := r.dialFrom(t, "127.0.0.1"); c != nil {
		t.Fatal("a third connection from one address with perSource 2 was accepted")
	}
	if _, d := r.dialFrom(t, "127.0.0.2"); d == nil {
		t.Fatal("another address was refused")
	}
	a.Close()
	if _, e := r.dialFrom(t, "127.0.0.1"); e == nil {
		t.Fatal("a place given back was not taken again")
	}
	if r.l.Refused() != 1 || r.l.Open() != 3 {
		t.Fatalf("refused %d, open %d: want 1 and 3", r.l.Refused(), r.l.Open())
	}
}

// TestShareEvicts: at the cap a newcomer takes the place of the
// connection that has waited longest without a request, idle or new and
// silent for newGrace; a connection carrying a request, or with one
// waiting to be read, keeps its place, and the newcomer is refused.
func TestShareEvicts(t *testing.T) {
	r := newSharedRig(t, 2, 10)
	ca, a := r.dialFrom(t, "127.0.0.1")
	_, b := r.dialFrom(t, "127.0.0.1")
	r.l.ConnState(a, http.StateActive)
	r.l.ConnState(b, http.StateActive)
	r.advance(time.Second)
	r.l.ConnState(a, http.StateIdle) // a waits for its next request
	r.advance(time.Second)

	_, c := r.dialFrom(t, "127.0.0.1")
	if c == nil {
		t.Fatal("the newcomer was refused while a connection was idle")
	}
	if !refusedConn(ca) {
		t.Fatal("the idle connection was not closed for the newcomer")
	}
	// b is active, c new for less than newGrace: the next is refused.
	if _, d := r.dialFrom(t, "127.0.0.1"); d != nil {
		t.Fatal("a newcomer took the place of an active or a just-opened connection")
	}
	// c has said nothing for newGrace: its place can be taken, unless a
	// request is waiting on it.
	r.advance(newGrace)
	if _, e := r.dialFrom(t, "127.0.0.1"); e == nil {
		t.Fatal("a connection silent for newGrace kept its place against a newcomer")
	}
	if r.l.Open() != 2 {
		t.Fatalf("open %d after the evictions, want the cap, 2", r.l.Open())
	}
}

// TestShareSparesPending: an idle connection whose next request has
// arrived, unread, keeps its place.
func TestShareSparesPending(t *testing.T) {
	r := newSharedRig(t, 1, 10)
	ca, a := r.dialFrom(t, "127.0.0.1")
	r.l.ConnState(a, http.StateIdle)
	r.advance(time.Minute)
	if _, err := ca.Write([]byte("GET / HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	// On loopback the bytes are in a's socket once Write has returned.
	if _, b := r.dialFrom(t, "127.0.0.1"); b != nil {
		t.Fatal("the newcomer took the place of a connection with a request waiting")
	}
}

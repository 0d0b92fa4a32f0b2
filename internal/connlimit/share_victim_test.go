package connlimit

import (
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

// TestShareVictimRules: at the cap, which connection's place a newcomer
// takes, rule by rule: one waiting for a request, else one stuck writing
// for stuckGrace, else one of the address over its fair share, else (for
// a newcomer on loopback) the longest-held one from the network, else
// under Share (not ShareKeepBuffers, keep) the longest-held one of the
// addresses holding as many places as the newcomer's; nil when none
// applies. The connections are made up (no sockets): only the rules'
// inputs (state, since, writing, source counts) are set.
func TestShareVictimRules(t *testing.T) {
	now := time.Unix(1000, 0)
	at := func(ago time.Duration) int64 { return now.Add(-ago).UnixNano() }
	type conn struct {
		name    string
		src     string
		state   http.ConnState
		since   time.Duration // ago
		writing time.Duration // ago; 0: no write under way
	}
	for _, tc := range []struct {
		name   string
		conns  []conn
		from   string
		victim string // "" none
		keep   bool   // ShareKeepBuffers: no rotation among equal shares
	}{
		{
			name: "a stuck writer, when none waits",
			conns: []conn{
				{"busy", "10.0.0.1", http.StateActive, 5 * time.Second, 0},
				{"stuck", "10.0.0.1", http.StateActive, time.Second, 2 * time.Second},
				{"slow", "10.0.0.1", http.StateActive, 9 * time.Second, 500 * time.Millisecond},
			},
			from: "10.0.0.1", victim: "stuck",
		},
		{
			name: "a stuck writer only after stuckGrace",
			conns: []conn{
				{"a", "10.0.0.1", http.StateActive, 5 * time.Second, 900 * time.Millisecond},
				{"b", "10.0.0.1", http.StateActive, 5 * time.Second, 0},
			},
			from: "10.0.0.1", victim: "", keep: true,
		},
		{
			name: "the fair share: the biggest holder's longest-held",
			conns: []conn{
				{"p1", "10.0.0.1", http.StateActive, 3 * time.Second, 0},
				{"p2", "10.0.0.1", http.StateActive, 4 * time.Second, 0},
				{"p3", "10.0.0.1", http.StateActive, 2 * time.Second, 0},
				{"q1", "10.0.0.2", http.StateActive, 9 * time.Second, 0},
				{"q2", "10.0.0.2", http.StateActive, 9 * time.Second, 0},
			},
			from: "10.0.0.3", victim: "p2",
		},
		{
			name: "no eviction among equal shares",
			conns: []conn{
				{"p1", "10.0.0.1", http.StateActive, 3 * time.Second, 0},
				{"q1", "10.0.0.2", http.StateActive, 9 * time.Second, 0},
				{"n1", "10.0.0.3", http.StateActive, 9 * time.Second, 0},
			},
			from: "10.0.0.3", victim: "", keep: true,
		},
		{
			name: "a share one larger than the newcomer's is not taken",
			conns: []conn{
				{"p1", "10.0.0.1", http.StateActive, 3 * time.Second, 0},
				{"p2", "10.0.0.1", http.StateActive, 3 * time.Second, 0},
				{"n1", "10.0.0.3", http.StateActive, 9 * time.Second, 0},
			},
			from: "10.0.0.3", victim: "", keep: true,
		},
		{
			name: "rotation: a new address among equal shares takes the longest-held network connection",
			conns: []conn{
				{"p1", "10.0.0.1", http.StateActive, 3 * time.Second, 0},
				{"q1", "10.0.0.2", http.StateActive, 9 * time.Second, 0},
				{"l1", "127.0.0.1", http.StateActive, 20 * time.Second, 0},
			},
			from: "10.0.0.3", victim: "q1",
		},
		{
			name: "rotation: an address holding more than any other replaces its own",
			conns: []conn{
				{"p1", "10.0.0.1", http.StateActive, 9 * time.Second, 0},
				{"p2", "10.0.0.2", http.StateActive, 8 * time.Second, 0},
				{"n1", "10.0.0.3", http.StateActive, 2 * time.Second, 0},
			},
			from: "10.0.0.3", victim: "n1",
		},
		{
			name: "rotation: equal shares of two, the newcomer's address among them",
			conns: []conn{
				{"p1", "10.0.0.1", http.StateActive, 3 * time.Second, 0},
				{"p2", "10.0.0.1", http.StateActive, 4 * time.Second, 0},
				{"n1", "10.0.0.3", http.StateActive, 2 * time.Second, 0},
				{"q1", "10.0.0.2", http.StateActive, 9 * time.Second, 0},
			},
			from: "10.0.0.3", victim: "p2",
		},
		{
			name: "rotation on loopback: loopback's own when the network holds none",
			conns: []conn{
				{"l1", "127.0.0.2", http.StateActive, 3 * time.Second, 0},
				{"l2", "127.0.0.3", http.StateActive, 9 * time.Second, 0},
			},
			from: "127.0.0.1", victim: "l2",
		},
		{
			name: "loopback takes a network connection's place among equal shares",
			conns: []conn{
				{"p1", "10.0.0.1", http.StateActive, 3 * time.Second, 0},
				{"q1", "10.0.0.2", http.StateActive, 7 * time.Second, 0},
				{"l1", "127.0.0.1", http.StateActive, 9 * time.Second, 0},
			},
			from: "127.0.0.1", victim: "q1",
		},
		{
			name: "a network newcomer does not take loopback's place",
			conns: []conn{
				{"l1", "127.0.0.1", http.StateActive, 9 * time.Second, 0},
				{"l2", "::1", http.StateActive, 9 * time.Second, 0},
			},
			from: "10.0.0.9", victim: "",
		},
		{
			name: "a new connection silent for newGrace before a stuck writer",
			conns: []conn{
				{"stuck", "10.0.0.1", http.StateActive, 9 * time.Second, 9 * time.Second},
				{"silent", "10.0.0.2", http.StateNew, newGrace, 0},
			},
			from: "10.0.0.1", victim: "silent",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := New(nil, len(tc.conns))
			if tc.keep {
				l.ShareKeepBuffers(0)
			} else {
				l.Share(0)
			}
			names := map[*Conn]string{}
			for _, c := range tc.conns {
				cc := &Conn{l: l, src: netip.MustParseAddr(c.src)}
				if c.state == http.StateNew || c.state == http.StateIdle {
					cc.TCPConn = tcpPair(t) // waited peeks at it
				}
				cc.state.Store(uint64(c.state))
				cc.since.Store(at(c.since))
				if c.writing > 0 {
					cc.writing.Store(at(c.writing))
				}
				l.conns[cc] = struct{}{}
				l.bySource[cc.src]++
				names[cc] = c.name
			}
			from := netip.MustParseAddr(tc.from)
			l.bySource[from]++ // the newcomer's, as acceptShared counts it
			l.mu.Lock()
			v := l.victim(now, from)
			l.mu.Unlock()
			if got := names[v]; got != tc.victim {
				t.Fatalf("victim %q, want %q", got, tc.victim)
			}
		})
	}
}

// TestShareFairConverges: at the cap, newcomers from two addresses, one
// holding every place, end with the places split evenly and then stop
// taking each other's: the fair share never fights itself.
func TestShareFairConverges(t *testing.T) {
	r := newSharedRig(t, 4, 4)
	for range 4 {
		_, c := r.dialFrom(t, "127.0.0.2")
		if c == nil {
			t.Fatal("a connection within the cap was refused")
		}
		r.l.ConnState(c, http.StateActive)
	}
	// 127.0.0.3 takes places until it holds its share, 2 of 4.
	for i := range 2 {
		if _, c := r.dialFrom(t, "127.0.0.3"); c == nil {
			t.Fatalf("newcomer %d from a second address was refused with the first holding %d of 4", i+1, 4-i)
		} else {
			r.l.ConnState(c, http.StateActive)
		}
	}
	if _, c := r.dialFrom(t, "127.0.0.3"); c != nil {
		t.Fatal("a third newcomer took a place past its even share")
	}
	if _, c := r.dialFrom(t, "127.0.0.2"); c != nil {
		t.Fatal("the first address took back a place from an even share")
	}
	r.l.mu.Lock()
	a, b := r.l.bySource[mustAddr("127.0.0.2")], r.l.bySource[mustAddr("127.0.0.3")]
	r.l.mu.Unlock()
	if a != 2 || b != 2 || r.l.Open() != 4 {
		t.Fatalf("places %d and %d, open %d: want 2, 2, 4", a, b, r.l.Open())
	}
}

// tcpPair returns the server's end of a loopback connection with nothing
// sent on it.
func tcpPair(t *testing.T) *net.TCPConn {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dial(t, ln.Addr().String())
	sc, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	return sc
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestShareEvictsStuckWriter: at the cap a connection whose write has
// waited stuckGrace for its peer to read (a client that pipelines
// requests and never reads their answers) gives its place to a newcomer
// from the same address; before stuckGrace, or without a write under
// way, it keeps it.
func TestShareEvictsStuckWriter(t *testing.T) {
	r := newSharedRig(t, 2, 10)
	_, a := r.dialFrom(t, "127.0.0.1")
	_, b := r.dialFrom(t, "127.0.0.1")
	r.l.ConnState(a, http.StateActive)
	r.l.ConnState(b, http.StateActive)
	wrote := make(chan error, 1)
	go func() {
		_, err := a.Write(make([]byte, 64<<20)) // more than any socket buffer
		wrote <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for a.writing.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the write under way was not recorded")
		}
		time.Sleep(time.Millisecond)
	}
	r.advance(DefaultStuckGrace - time.Millisecond)
	if _, c := r.dialFrom(t, "127.0.0.1"); c != nil {
		t.Fatal("a writer stuck for less than stuckGrace lost its place")
	}
	r.advance(time.Millisecond)
	if _, d := r.dialFrom(t, "127.0.0.1"); d == nil {
		t.Fatal("a writer stuck for stuckGrace kept its place against a newcomer")
	}
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("the stuck write succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stuck write did not end when its connection was closed")
	}
	if a.writing.Load() != 0 {
		t.Fatal("the ended write is still recorded as under way")
	}
}

package balancer

import (
	"testing"
	"time"
)

// TestHold: an opaque connection's try ends with its connect, so the
// estimate learns the connect time, while the open connection stays in
// flight until Release and weighs in the duel meanwhile; closing it,
// however long it lived, changes no estimate.
func TestHold(t *testing.T) {
	b, clk := newTest(t, Config{}, "a", "b")
	a, other := b.endpoint("a"), b.endpoint("b")
	for range WarmupSamples + 1 {
		try(clk, other, 2*time.Millisecond, false)
	}
	start := a.Start()
	clk.Advance(2 * time.Millisecond) // the connect
	a.Hold()
	a.Done(start, false)
	st := b.Status()[0]
	if st.InFlight != 1 || st.EWMA < 1900*time.Microsecond || st.EWMA > 2*time.Millisecond {
		t.Fatalf("connected: %+v, want 1 in flight, the 2ms connect time as the estimate", st)
	}
	// Three held connections: a costs 4× b's, and wins a fifth of the duels.
	a.Hold()
	a.Hold()
	wins := 0
	for range 10_000 {
		if b.duel(a, other, b.now()) == a {
			wins++
		}
	}
	if wins < 1500 || wins > 2500 {
		t.Errorf("3 connections open: a won %d of 10,000 duels, want about 2,000", wins)
	}
	clk.Advance(time.Hour) // the connections' life
	a.Release()
	a.Release()
	a.Release()
	st = b.Status()[0]
	if st.InFlight != 0 || st.EWMA > 2*time.Millisecond {
		t.Errorf("closed after an hour: %+v, want none in flight and no sample of the hour", st)
	}
}

package balancer

import (
	"testing"
	"time"
)

// TestDoneOwnFailure: a failure is the endpoint's own (the breaker counts
// it in its failure rate only) when it repeats the endpoint's run of
// failures while another endpoint serves: ready, not ejected, its latest
// try that ended a success within ServingWindow (or, untried, its arrival
// within ArrivalGrace).
// Each case sets up a, b and c with a's previous try as given, then fails
// a once more, each try lasting 1 ms.
func TestDoneOwnFailure(t *testing.T) {
	for _, tc := range []struct {
		name       string
		aFailedYet bool                              // a's previous try failed
		setup      func(clk *fakeClock, b *Balancer) // the other endpoints' state
		targets    []Target                          // nil: a, b, c ready
		want       bool
	}{
		{name: "the first failure of a run may be the destination's", want: false},
		{name: "a repeat while the others were never tried", aFailedYet: true, want: true},
		{
			name: "a repeat while b's latest try succeeded", aFailedYet: true, want: true,
			setup: func(clk *fakeClock, b *Balancer) {
				failN(clk, b.endpoint("b"), 1)
				failN(clk, b.endpoint("c"), 1)
				try(clk, b.endpoint("b"), time.Millisecond, false)
			},
		},
		{
			name: "a repeat while every other endpoint failed its latest try", aFailedYet: true, want: false,
			setup: func(clk *fakeClock, b *Balancer) {
				try(clk, b.endpoint("b"), time.Millisecond, false)
				failN(clk, b.endpoint("b"), 1)
				failN(clk, b.endpoint("c"), 1)
			},
		},
		{
			name: "a repeat while the one that serves is ejected", aFailedYet: true, want: false,
			setup: func(clk *fakeClock, b *Balancer) {
				failN(clk, b.endpoint("b"), 1)
				failN(clk, b.endpoint("c"), 2) // ejected at the 2nd
				try(clk, b.endpoint("c"), time.Millisecond, false)
				if b.endpoint("c").class(b.now()) != ejected {
					panic("c is not ejected")
				}
			},
		},
		{
			name: "a repeat while the one that serves is terminating", aFailedYet: true, want: false,
			targets: []Target{{Addr: "a"}, {Addr: "b"}, {Addr: "c", Terminating: true}},
			setup: func(clk *fakeClock, b *Balancer) {
				failN(clk, b.endpoint("b"), 1)
			},
		},
		{name: "a repeat of a destination's one endpoint", aFailedYet: true, targets: []Target{{Addr: "a"}}, want: false},
		{
			name: "a repeat while the others' arrival is ArrivalGrace ago, untried", aFailedYet: true, want: false,
			setup: func(clk *fakeClock, b *Balancer) { clk.Advance(ArrivalGrace) },
		},
		{
			name: "a repeat while b's success is ServingWindow ago", aFailedYet: true, want: false,
			setup: func(clk *fakeClock, b *Balancer) {
				failN(clk, b.endpoint("c"), 1)
				try(clk, b.endpoint("b"), time.Millisecond, false)
				clk.Advance(ServingWindow - time.Millisecond) // a's own try ends 2 ms later
			},
		},
		{
			name: "a repeat while b's success is just inside ServingWindow", aFailedYet: true, want: true,
			setup: func(clk *fakeClock, b *Balancer) {
				failN(clk, b.endpoint("c"), 1)
				try(clk, b.endpoint("b"), time.Millisecond, false)
				clk.Advance(ServingWindow - 3*time.Millisecond)
			},
		},
		{
			// A hung pod whose callers give up: its tries end unjudged,
			// and say nothing of whether the destination serves.
			name: "a repeat while b's tries are all abandoned", aFailedYet: true, want: false,
			setup: func(clk *fakeClock, b *Balancer) {
				failN(clk, b.endpoint("c"), 1)
				for range 20 {
					e := b.endpoint("b")
					start := e.Start()
					clk.Advance(time.Second)
					e.Abandon(start)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newTest(t, Config{ConsecutiveFailures: 2, MaxEjectionPercent: 100}, "a", "b", "c")
			if tc.targets != nil {
				b.Update(tc.targets)
			}
			if tc.setup != nil {
				tc.setup(clk, b)
			}
			a := b.endpoint("a")
			if tc.aFailedYet {
				failN(clk, a, 1)
			}
			start := a.Start()
			clk.Advance(time.Millisecond)
			ejected, own := a.Done(start, true)
			if own != tc.want {
				t.Errorf("own = %v, want %v", own, tc.want)
			}
			if tc.aFailedYet != ejected {
				t.Errorf("ejected = %v at failure %d of a run, want it at the 2nd (ConsecutiveFailures 2): own must not change ejection", ejected, map[bool]int{false: 1, true: 2}[tc.aFailedYet])
			}
		})
	}
}

// TestDoneOwnNeverOnSuccess: a success is never a failure of any kind,
// whatever the run before it.
func TestDoneOwnNeverOnSuccess(t *testing.T) {
	b, clk := newTest(t, Config{}, "a", "b")
	a := b.endpoint("a")
	failN(clk, a, 3)
	start := a.Start()
	clk.Advance(time.Millisecond)
	if _, own := a.Done(start, false); own {
		t.Errorf("a success was reported as the endpoint's own failure")
	}
	// The run ended: the next failure is a first again.
	start = a.Start()
	clk.Advance(time.Millisecond)
	if _, own := a.Done(start, true); own {
		t.Errorf("the first failure after a success was reported as the endpoint's own")
	}
}

// TestDonePinnedNeverOwn: a pinned try can go to no other endpoint, and
// ejection never moves it: each of its failures is the destination's.
func TestDonePinnedNeverOwn(t *testing.T) {
	b, clk := newTest(t, Config{}, "a", "b")
	a := b.endpoint("a")
	try(clk, b.endpoint("b"), time.Millisecond, false) // b serves
	for i := range 3 {
		tr := a.StartPinned()
		clk.Advance(time.Millisecond)
		if _, own := a.Done(tr, true); own {
			t.Fatalf("pinned failure %d reported as the endpoint's own", i+1)
		}
	}
	tr := a.Start()
	clk.Advance(time.Millisecond)
	if _, own := a.Done(tr, true); !own {
		t.Errorf("a balanced try's repeat failure while b serves is not the endpoint's own")
	}
}

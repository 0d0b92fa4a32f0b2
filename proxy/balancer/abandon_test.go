package balancer

import (
	"testing"
	"time"
)

// TestAbandon: a try that ends neither way (its client went away) leaves
// the run of failures as it was, never lowers the estimate (its latency is
// a lower bound), nor makes an unknown one known, and
// ends the try in flight.
func TestAbandon(t *testing.T) {
	for _, tc := range []struct {
		name     string
		warm     time.Duration // latency of 20 successful tries first; 0: none
		abandon  time.Duration // the abandoned try's latency
		wantLow  float64       // estimate after it, at least (ms)
		wantHigh float64       // and at most (ms); <0: unknown
	}{
		{"a fast cancel does not make a slow pod look fast", 50 * time.Millisecond, time.Millisecond, 49.9, 50.1},
		{"an unknown estimate stays unknown", 0, time.Millisecond, -1, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newTest(t, Config{ConsecutiveFailures: 3}, "a:1")
			e := b.endpoint("a:1")
			if tc.warm > 0 {
				for range 20 {
					try(clk, e, tc.warm, false)
					clk.Advance(time.Millisecond)
				}
			}
			failN(clk, e, 2)
			// After an idle gap a sample weighs nearly all (DecayTime).
			clk.Advance(2 * DecayTime)
			start := e.Start()
			clk.Advance(tc.abandon)
			e.Abandon(start)
			if n := e.inFlight.Load(); n != 0 {
				t.Errorf("in flight %d after Abandon, want 0", n)
			}
			got := e.estimate(b.now())
			if tc.wantHigh < 0 {
				if got >= 0 {
					t.Errorf("estimate %v ms, want unknown", got/ms)
				}
			} else if got/ms < tc.wantLow || got/ms > tc.wantHigh {
				t.Errorf("estimate %v ms, want %v-%v", got/ms, tc.wantLow, tc.wantHigh)
			}
			if st := b.Status()[0]; st.ConsecutiveFailures != 2 {
				t.Errorf("consecutive failures %d after an abandoned try, want 2 as before it", st.ConsecutiveFailures)
			}
			if ejected := try(clk, e, time.Millisecond, true); !ejected {
				t.Error("the third failure (an abandoned try between) did not eject")
			}
		})
	}
}

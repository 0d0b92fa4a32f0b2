package balancer

import (
	"math"
	"testing"
	"time"
)

// TestAnsweredLatency: a try's latency is to its answer (Answered), not
// to its end: a stream answered in 1 ms that lasts 10 s or 10 min says
// the pod answers in 1 ms, whether it ends well, fails or its client
// cancels it; it stays in flight until it ends. A try that ends without
// an answer counts to its end, as before.
func TestAnsweredLatency(t *testing.T) {
	const answer = time.Millisecond
	for _, tc := range []struct {
		name     string
		warm     bool          // 20 tries of 1 ms first: a known estimate of 1 ms
		tries    int           // tries like this one, each after an idle gap
		answered bool          // the try gets its answer after 1 ms
		life     time.Duration // the try's end, from its start
		outcome  byte          // 's' success, 'f' failure, 'a' abandoned
		wantLow  float64       // estimate (bound when unknown) as of its latest sample, at least (ms)
		wantHigh float64       // and at most (ms)
	}{
		{"a 10 s stream samples its 1 ms answer", true, 5, true, 10 * time.Second, 's', 0.99, 1.01},
		{"a failure after its answer counts its answer's time", true, 5, true, 10 * time.Second, 'f', 0.99, 1.01},
		{"a stream cancelled after 10 min raises no estimate", true, 5, true, 10 * time.Minute, 'a', 0.99, 1.01},
		{"a stream cancelled after 10 min raises no bound", false, 10, true, 10 * time.Minute, 'a', 0.99, 1.01},
		// As before: without an answer the try counts to its end. Each
		// sample after an idle gap weighs nearly all, and rises at most
		// MaxRise×: 1 ms doubles five times.
		{"a failure before any answer counts to its end", true, 5, false, 10 * time.Second, 'f', 31.9, 32.1},
		// An unknown estimate's bound decays over each 10 min wait, and
		// rises at most to MaxRise × MinEstimate from there.
		{"a try cancelled before any answer raises the bound", false, 5, false, 10 * time.Minute, 'a', 1.99, 2.01},
		{"a try that ends without an answer counts to its end", true, 5, false, 10 * time.Second, 's', 31.9, 32.1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newTest(t, Config{}, "a:1")
			e := b.endpoint("a:1")
			if tc.warm {
				for range 20 {
					try(clk, e, time.Millisecond, false)
					clk.Advance(time.Millisecond)
				}
			}
			for i := range tc.tries {
				// After an idle gap a sample weighs nearly all (DecayTime):
				// a latency to the end would show at once.
				clk.Advance(2 * DecayTime)
				tr := e.Start()
				if tc.answered {
					clk.Advance(answer)
					e.Answered(&tr)
					if n := e.inFlight.Load(); n != 1 {
						t.Fatalf("try %d: in flight %d once answered, want 1 until it ends", i, n)
					}
					clk.Advance(tc.life - answer)
				} else {
					clk.Advance(tc.life)
				}
				switch tc.outcome {
				case 'a':
					e.Abandon(tr)
				default:
					e.Done(tr, tc.outcome == 'f')
				}
				if n := e.inFlight.Load(); n != 0 {
					t.Fatalf("try %d: in flight %d after its end, want 0", i, n)
				}
			}
			// As of its latest sample: the estimate decays while a try
			// lives, as an idle endpoint's does.
			v := math.Float64frombits(e.ewma.Load())
			if known := v >= 0; known != tc.warm {
				t.Fatalf("estimate %v: known %v, want %v", v, known, tc.warm)
			}
			got := shown(v) / ms
			if got < tc.wantLow || got > tc.wantHigh {
				t.Errorf("estimate %.3f ms after %d tries, want %v-%v ms", got, tc.tries, tc.wantLow, tc.wantHigh)
			}
		})
	}
}

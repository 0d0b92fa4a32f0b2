package balancer

import (
	"math"
	"testing"
	"time"
)

// TestAbandonBound: on an unknown estimate an abandoned try sets a lower
// bound of the pod's latency, rising at most MaxRise× per try and decaying
// as an estimate does; the estimate stays unknown, so the first success
// starts the warm-up without the bound; a failure sets none.
func TestAbandonBound(t *testing.T) {
	type step struct {
		d       time.Duration // a try's latency, or an idle wait
		outcome byte          // 'a' abandoned, 'f' failed, 's' succeeded, 'i' idle
	}
	abandons := func(n int, d time.Duration) []step {
		s := make([]step, n)
		for i := range s {
			s[i] = step{d, 'a'}
		}
		return s
	}
	for _, tc := range []struct {
		name      string
		steps     []step
		wantMs    float64 // Status's EWMA after them (ms)
		wantKnown bool
	}{
		{"one abandon after 200 ms: at most 2× the floor", abandons(1, 200*time.Millisecond), 2, false},
		{"eight: still rising", abandons(8, 200*time.Millisecond), 193.4, false},
		{"hung: doubling (less 4 % decay each) to the wait", abandons(9, 200*time.Millisecond), 200, false},
		{"hung: never past the wait", abandons(12, 200*time.Millisecond), 200, false},
		{"a stall of the node counts 2 ms", abandons(1, 2*time.Second), 2, false},
		{"a fast abandon: its wait", abandons(1, 300*time.Microsecond), 0.3, false},
		{"a shorter wait never lowers it", append(abandons(9, 200*time.Millisecond), step{time.Millisecond, 'a'}), 200, false},
		{"decays as an estimate", append(abandons(9, 200*time.Millisecond), step{DecayTime, 'i'}), 200 / math.E, false},
		{"failures set none, slow or fast", []step{{200 * time.Millisecond, 'f'}, {time.Millisecond, 'f'}}, 0, false},
		{"the first success makes it known, without the bound", append(abandons(9, 200*time.Millisecond), step{3 * time.Millisecond, 's'}), 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newTest(t, Config{ConsecutiveFailures: 100}, "a")
			e := b.endpoint("a")
			var start Try
			for _, s := range tc.steps {
				if s.outcome == 'i' {
					clk.Advance(s.d)
					continue
				}
				start = e.Start()
				clk.Advance(s.d)
				switch s.outcome {
				case 'a':
					e.Abandon(start)
				default:
					e.Done(start, s.outcome == 'f')
				}
			}
			if known := math.Float64frombits(e.ewma.Load()) >= 0; known != tc.wantKnown {
				t.Errorf("estimate known %v, want %v", known, tc.wantKnown)
			}
			// A known one is dated by its try's start: decayed by its latency.
			if got := float64(b.Status()[0].EWMA) / ms; math.Abs(got-tc.wantMs) > tc.wantMs*1e-3+1e-6 {
				t.Errorf("EWMA shown %.4f ms, want %.4f", got, tc.wantMs)
			}
			if n := e.inFlight.Load(); n != 0 {
				t.Errorf("in flight %d, want 0", n)
			}
		})
	}
}

// TestDuelBound: an unknown estimate counts as the other candidate's but
// at least its bound; two unknown ones as their bounds.
func TestDuelBound(t *testing.T) {
	for _, tc := range []struct {
		name      string
		xBound    time.Duration // x is unknown with this bound
		y         time.Duration // y's estimate; <0: unknown with bound -y; 0: unknown
		wantXWins float64
	}{
		{"no bound: as the other", 0, 40 * time.Millisecond, 0.5},
		{"a bound below the other's estimate: as the other", time.Millisecond, 40 * time.Millisecond, 0.5},
		{"hung among fast pods: 200 ms counts 100×", 200 * time.Millisecond, 100 * time.Microsecond, 1.0 / 101},
		{"against an unknown one without a bound", 200 * time.Millisecond, 0, 1.0 / 101},
		{"two bounds within Tolerance", 200 * time.Millisecond, -150 * time.Millisecond, 0.5},
		{"two bounds past Tolerance", 8 * time.Millisecond, -2 * time.Millisecond, 1.0 / 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, _ := newTest(t, Config{}, "x", "y")
			x, y := b.endpoint("x"), b.endpoint("y")
			x.ewma.Store(math.Float64bits(unknown - float64(tc.xBound)))
			switch {
			case tc.y > 0:
				y.ewma.Store(math.Float64bits(float64(tc.y)))
			case tc.y < 0:
				y.ewma.Store(math.Float64bits(unknown + float64(tc.y)))
			}
			x.last.Store(b.now())
			y.last.Store(b.now())
			for _, r := range []float64{tc.wantXWins - 1e-9, tc.wantXWins + 1e-9} {
				b.float = func() float64 { return r }
				if got, want := b.duel(x, y, b.now()), cond(r < tc.wantXWins, x, y); got != want {
					t.Errorf("duel with random %v: %s won, want %s", r, got.addr, want.addr)
				}
				if got, want := b.duel(y, x, b.now()), cond(r < 1-tc.wantXWins, y, x); got != want {
					t.Errorf("duel(y, x) with random %v: %s won, want %s", r, got.addr, want.addr)
				}
			}
		})
	}
}

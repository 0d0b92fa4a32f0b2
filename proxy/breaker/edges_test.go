package breaker

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/minimesh/minimesh/policy"
)

// Found probing the resilience semantics (docs/policy.md, "Circuit
// breaker"); each test failed on the gobreaker-based breaker. In synctest
// bubbles: time passes on the bubble's clock.

// TestSlowFailureCountsWhenItEnds: with failureRate, a try that fails
// after longer than the window (a 15s timeout, a 10s window) is still a
// failure: it opens a breaker of consecutiveFailures: 1, and three of
// them, concurrent, one of 3. gobreaker counted an outcome in the bucket
// where its try began and dropped it once that bucket had left the
// window: a hanging upstream whose tries time out after the window never
// opened the breaker.
func TestSlowFailureCountsWhenItEnds(t *testing.T) {
	for _, n := range []int{1, 3} {
		synctest.Test(t, func(t *testing.T) {
			c := cfg(n, 1, time.Minute)
			c.FailureRate = &policy.FailureRate{Threshold: 0.5, MinRequests: 100, Window: 10 * time.Second}
			b := New("d", c, nil)
			var dones []Done
			for range n {
				d, err := b.Allow()
				if err != nil {
					t.Fatal(err)
				}
				dones = append(dones, d)
			}
			time.Sleep(15 * time.Second)
			for _, d := range dones {
				d(ErrFailed)
			}
			if st := b.State(); st != Open {
				t.Fatalf("consecutiveFailures %d: %d tries failed after 15s (window 10s): %v, counts %+v; want open", n, n, st, b.Counts())
			}
		})
	}
}

// TestStaleProbeFreesItsPlace: a half-open probe that never ends (a
// stream, a body nobody reads) holds its place for openTimeout, not for
// ever: then another probe goes, and its success closes the breaker; the
// stale probe's late outcome counts no more.
func TestStaleProbeFreesItsPlace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New("d", cfg(1, 1, time.Minute), nil)
		fail(t, b, 1)
		time.Sleep(time.Minute + time.Second)
		stale, err := b.Allow()
		if err != nil {
			t.Fatalf("first probe refused: %v", err)
		}
		time.Sleep(59 * time.Second)
		if _, err := b.Allow(); err != ErrOpen {
			t.Fatal("a second probe went while the first was in flight for less than openTimeout")
		}
		time.Sleep(time.Second)
		d, err := b.Allow()
		if err != nil {
			t.Fatalf("a probe in flight for openTimeout still holds the breaker half-open: %v", err)
		}
		d(nil)
		if st := b.State(); st != Closed {
			t.Fatalf("state %v after the fresh probe's success, want closed", st)
		}
		stale(ErrFailed)
		if st := b.State(); st != Closed {
			t.Fatalf("the released probe's late failure moved the breaker to %v", st)
		}
	})
}

// TestStaleProbeFailureAfterRelease: a released probe's failure does not
// reopen a breaker whose fresh probe is still in flight.
func TestStaleProbeFailureAfterRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New("d", cfg(1, 1, time.Second), nil)
		fail(t, b, 1)
		time.Sleep(2 * time.Second)
		stale, _ := b.Allow()
		time.Sleep(time.Second)
		fresh, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		stale(ErrFailed)
		if st := b.State(); st != HalfOpen {
			t.Fatalf("state %v, want half-open", st)
		}
		fresh(nil)
		if st := b.State(); st != Closed {
			t.Fatalf("state %v, want closed", st)
		}
	})
}

// TestFailureRateShareReachesThreshold: 55 failures in 100 tries reach a
// threshold of 0.55 ("the share of failures is at least threshold");
// failures ≥ threshold × tries did not, 0.55 × 100 being 55.000000000000007.
func TestFailureRateShareReachesThreshold(t *testing.T) {
	c := cfg(1000, 1, time.Hour)
	c.FailureRate = &policy.FailureRate{Threshold: 0.55, MinRequests: 100, Window: time.Hour}
	b := New("d", c, nil)
	for i := range 100 {
		d, err := b.Allow()
		if err != nil {
			t.Fatalf("try %d refused", i+1)
		}
		if i < 45 {
			d(nil)
		} else {
			d(ErrFailed)
		}
	}
	if st := b.State(); st != Open {
		t.Fatalf("55 of 100 failed at threshold 0.55: %v %+v", st, b.Counts())
	}
}

// TestWindowEdges: with failureRate, a run of failures counts as
// consecutive only while it lies within the window, and the share only
// over the tries still in it; at minRequests exactly the rate applies.
func TestWindowEdges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg(3, 1, time.Minute)
		c.FailureRate = &policy.FailureRate{Threshold: 0.5, MinRequests: 4, Window: 10 * time.Second}
		b := New("d", c, nil)
		ok := func(n int) {
			for range n {
				d, err := b.Allow()
				if err != nil {
					t.Fatal(err)
				}
				d(nil)
			}
		}
		fail(t, b, 2)
		time.Sleep(11 * time.Second) // both aged out
		fail(t, b, 1)
		if got := b.Counts(); b.State() != Closed || got.ConsecutiveFailures != 1 || got.TotalFailures != 1 {
			t.Fatalf("a run across the window: %v %+v, want closed with one failure", b.State(), got)
		}
		ok(3) // 1 of 4: below the threshold
		time.Sleep(5 * time.Second)
		fail(t, b, 1) // 2 of 5 within the window
		if b.State() != Closed {
			t.Fatalf("2 of 5 opened at 0.5: %+v", b.Counts())
		}
		time.Sleep(6 * time.Second) // the first four age out
		fail(t, b, 1)               // 2 failures in a row, 2 tries in the window: below minRequests
		if b.State() != Closed {
			t.Fatalf("opened below minRequests: %+v", b.Counts())
		}
		ok(1)
		fail(t, b, 1) // 3 of 4 at minRequests
		if b.State() != Open {
			t.Fatalf("3 of 4 at minRequests 4: %v %+v", b.State(), b.Counts())
		}
	})
}

// TestConcurrentProbes: of many concurrent requests to a half-open
// breaker exactly halfOpenRequests go through; their successes close it.
func TestConcurrentProbes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const half = 3
		b := New("d", cfg(1, half, time.Second), nil)
		fail(t, b, 1)
		time.Sleep(2 * time.Second)
		dones := make(chan Done, 50)
		for range 50 {
			go func() {
				if d, err := b.Allow(); err == nil {
					dones <- d
				}
			}()
		}
		synctest.Wait()
		if n := len(dones); n != half {
			t.Fatalf("%d probes admitted, want %d", n, half)
		}
		for range half {
			go (<-dones)(nil)
		}
		synctest.Wait()
		if st := b.State(); st != Closed {
			t.Fatalf("state %v after %d successful probes", st, half)
		}
	})
}

// TestYieldedProbe: a half-open probe that yields its place to its retry
// (ErrYielded) frees it at once for another probe, and its outcome still
// counts when it comes, after openTimeout too (it holds no place): a
// failure opens the breaker again, ErrIgnored counts neither way. Its
// outcome of an older state counts for nothing, and a closed breaker's
// try yields nothing.
func TestYieldedProbe(t *testing.T) {
	run := func(name string, f func(t *testing.T)) {
		t.Run(name, func(t *testing.T) { synctest.Test(t, f) })
	}
	{
		halfOpen := func(t *testing.T) *Breaker {
			b := New("d", cfg(1, 1, time.Second), nil)
			fail(t, b, 1)
			time.Sleep(2 * time.Second)
			return b
		}
		run("its failure counts", func(t *testing.T) {
			b := halfOpen(t)
			probe, _ := b.Allow()
			probe(ErrYielded)
			other, err := b.Allow()
			if err != nil {
				t.Fatalf("the yielded place was not free: %v", err)
			}
			time.Sleep(2 * time.Second) // past openTimeout: no release applies
			probe(ErrFailed)
			if st := b.State(); st != Open {
				t.Fatalf("state %v after the yielded probe's failure, want open", st)
			}
			other(nil) // of the half-open state left: nothing
			if st := b.State(); st != Open {
				t.Fatalf("state %v after the other probe's late success, want open", st)
			}
		})
		run("ignored once its retry goes", func(t *testing.T) {
			b := halfOpen(t)
			probe, _ := b.Allow()
			probe(ErrYielded)
			retry, err := b.Allow()
			if err != nil {
				t.Fatal(err)
			}
			probe(ErrIgnored)
			probe(ErrFailed) // once is all
			if st := b.State(); st != HalfOpen {
				t.Fatalf("state %v, want half-open", st)
			}
			retry(nil)
			if st := b.State(); st != Closed {
				t.Fatalf("state %v after the retry's success, want closed", st)
			}
		})
		run("of an older state", func(t *testing.T) {
			b := halfOpen(t)
			probe, _ := b.Allow()
			probe(ErrYielded)
			retry, _ := b.Allow()
			retry(nil) // closes
			probe(ErrFailed)
			if st := b.State(); st != Closed {
				t.Fatalf("state %v: a probe of the half-open state left counted", st)
			}
		})
		run("closed", func(t *testing.T) {
			b := New("d", cfg(1, 1, time.Second), nil)
			d, _ := b.Allow()
			d(ErrYielded)
			if c := b.Counts(); c.TotalFailures != 0 || c.TotalSuccesses != 0 {
				t.Fatalf("counts %+v after ErrYielded, want none", c)
			}
			d(ErrFailed)
			if st := b.State(); st != Open {
				t.Fatalf("state %v, want open on the failure after the yield", st)
			}
		})
	}
}

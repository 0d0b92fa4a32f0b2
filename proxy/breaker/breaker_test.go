package breaker

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/minimesh/minimesh/policy"
)

func cfg(n, half int, open time.Duration) *policy.CircuitBreaker {
	c := policy.DefaultCircuitBreaker()
	c.ConsecutiveFailures, c.HalfOpenRequests, c.OpenTimeout = n, half, open
	return c
}

// fail sends n failing tries.
func fail(t *testing.T, b *Breaker, n int) {
	t.Helper()
	for i := range n {
		done, err := b.Allow()
		if err != nil {
			t.Fatalf("try %d refused: %v", i+1, err)
		}
		done(ErrFailed)
	}
}

func TestOpensOnNthConsecutiveFailure(t *testing.T) {
	for _, n := range []int{1, 2, 5} {
		var transitions []string
		b := New("d", cfg(n, 2, time.Hour), func(_ string, from, to State) {
			transitions = append(transitions, from.String()+">"+to.String())
		})
		fail(t, b, n-1)
		if b.State() != Closed {
			t.Fatalf("n=%d: open after %d failures", n, n-1)
		}
		fail(t, b, 1)
		if b.State() != Open {
			t.Fatalf("n=%d: not open after %d failures", n, n)
		}
		if _, err := b.Allow(); err != ErrOpen {
			t.Fatalf("n=%d: try %d allowed while open", n, n+1)
		}
		if len(transitions) != 1 || transitions[0] != "closed>open" {
			t.Fatalf("transitions %v", transitions)
		}
	}
}

func TestSuccessResetsConsecutiveCount(t *testing.T) {
	b := New("d", cfg(3, 1, time.Hour), nil)
	fail(t, b, 2)
	done, _ := b.Allow()
	done(nil)
	fail(t, b, 2)
	if b.State() != Closed {
		t.Fatal("2+2 failures around a success opened a breaker of 3")
	}
}

func TestIgnoredOutcomesDoNotCount(t *testing.T) {
	b := New("d", cfg(2, 1, time.Hour), nil)
	for range 10 {
		done, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		done(ErrIgnored)
	}
	if b.State() != Closed {
		t.Fatal("ignored outcomes opened the breaker")
	}
}

func TestHalfOpenLetsExactlyProbesThroughAndCloses(t *testing.T) {
	b := New("d", cfg(1, 3, 30*time.Millisecond), nil)
	fail(t, b, 1)
	time.Sleep(40 * time.Millisecond)
	if b.State() != HalfOpen {
		t.Fatalf("state %v after the open timeout", b.State())
	}
	var dones []Done
	for i := range 3 {
		d, err := b.Allow()
		if err != nil {
			t.Fatalf("probe %d refused", i+1)
		}
		dones = append(dones, d)
	}
	if _, err := b.Allow(); err != ErrOpen {
		t.Fatal("a 4th concurrent probe was allowed")
	}
	for _, d := range dones {
		d(nil)
	}
	if b.State() != Closed {
		t.Fatalf("state %v after 3 successful probes", b.State())
	}
}

func TestFailedProbeReopens(t *testing.T) {
	b := New("d", cfg(1, 2, 20*time.Millisecond), nil)
	fail(t, b, 1)
	time.Sleep(30 * time.Millisecond)
	d, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	d(ErrFailed)
	if b.State() != Open {
		t.Fatalf("state %v after a failed probe", b.State())
	}
	if ra := b.RetryAfter(time.Now()); ra != time.Second {
		t.Fatalf("RetryAfter %v, want the 1s floor", ra)
	}
}

func TestFailureRate(t *testing.T) {
	c := cfg(100, 1, time.Hour)
	c.FailureRate = &policy.FailureRate{Threshold: 0.5, MinRequests: 10, Window: 10 * time.Second}
	b := New("d", c, nil)
	for i := range 9 { // alternate: never 100 in a row, 4/9 then 5/10 failed
		d, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			d(ErrFailed)
		} else {
			d(nil)
		}
	}
	if b.State() != Closed {
		t.Fatal("opened below minRequests")
	}
	fail(t, b, 1)
	if b.State() != Open {
		t.Fatalf("5 of 10 failed at threshold 0.5: state %v", b.State())
	}
}

func TestRetryAfterCountsDown(t *testing.T) {
	b := New("d", cfg(1, 1, 60*time.Second), nil)
	fail(t, b, 1)
	now := time.Now()
	if ra := b.RetryAfter(now); ra != 60*time.Second {
		t.Fatalf("RetryAfter right after opening = %v, want 60s", ra)
	}
	if ra := b.RetryAfter(now.Add(20500 * time.Millisecond)); ra != 40*time.Second {
		t.Fatalf("RetryAfter 20.5s later = %v, want 40s (rounded up)", ra)
	}
	if b.OpenUntil().IsZero() {
		t.Fatal("OpenUntil zero while open")
	}
}

// TestLongestDurations: a breaker at the policy's bounds on its times
// (policy.MaxStateDuration) counts and opens, and says when it reopens: a
// window of 2,400,000 hours overflowed gobreaker's bucket sum (a panic in
// Allow on every request), an open time near the largest duration its
// Retry-After.
func TestLongestDurations(t *testing.T) {
	c := cfg(3, 1, policy.MaxStateDuration)
	c.FailureRate = &policy.FailureRate{Threshold: 0.5, MinRequests: 2, Window: policy.MaxStateDuration}
	b := New("d", c, nil)
	d, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	d(nil)
	fail(t, b, 1)
	if b.State() != Open {
		t.Fatalf("1 of 2 failed at threshold 0.5: state %v", b.State())
	}
	if ra := b.RetryAfter(time.Now()); ra != policy.MaxStateDuration {
		t.Fatalf("RetryAfter = %v, want %v", ra, policy.MaxStateDuration)
	}
}

// TestWhy: an open breaker says which rule opened it, a half-open probe's
// failure included; a closed one says nothing. In a synctest bubble: the
// open timeout passes on the bubble's clock.
func TestWhy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New("d", cfg(2, 1, time.Hour), nil)
		if w := b.Why(); w != "" {
			t.Fatalf("closed: Why %q", w)
		}
		fail(t, b, 2)
		if w := b.Why(); w != "2 failures in a row (consecutiveFailures: 2)" {
			t.Fatalf("open: Why %q", w)
		}
		c := cfg(100, 1, time.Minute)
		c.FailureRate = &policy.FailureRate{Threshold: 0.5, MinRequests: 2, Window: 10 * time.Second}
		r := New("r", c, nil)
		d, _ := r.Allow()
		d(nil)
		fail(t, r, 1)
		if w := r.Why(); w != "1 failures in 2 tries within 10s (failureRate.threshold: 0.5)" {
			t.Fatalf("open by rate: Why %q", w)
		}
		time.Sleep(time.Minute + time.Second) // past the open timeout: the next Allow half-opens
		fail(t, r, 1)
		if w := r.Why(); w != "a half-open probe failed" {
			t.Fatalf("reopened: Why %q", w)
		}
	})
}

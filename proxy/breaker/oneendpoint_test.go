package breaker

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/minimesh/minimesh/policy"
)

// report sends one try with the outcome.
func report(t *testing.T, b *Breaker, outcome error) {
	t.Helper()
	done, err := b.Allow()
	if err != nil {
		t.Fatalf("try refused: %v", err)
	}
	done(outcome)
}

// TestOneEndpointFailureOutsideTheRun: failures of one endpoint while
// others serve (ErrOneEndpoint) neither lengthen the destination's run of
// failures nor end it: a hundred of them between the 4th and the 5th
// failure of a consecutiveFailures: 5 breaker leave it closed until the
// 5th, and a success after them still resets the run.
func TestOneEndpointFailureOutsideTheRun(t *testing.T) {
	b := New("d", cfg(5, 1, time.Hour), nil)
	fail(t, b, 4)
	for range 100 {
		report(t, b, ErrOneEndpoint)
	}
	if st := b.State(); st != Closed {
		t.Fatalf("%v after 4 failures and 100 of one endpoint's, want closed", st)
	}
	c := b.Counts()
	if c.ConsecutiveFailures != 4 || c.TotalFailures != 104 {
		t.Errorf("counts %+v, want 4 consecutive failures (the run untouched), 104 in all", c)
	}
	fail(t, b, 1)
	if st := b.State(); st != Open {
		t.Fatalf("%v after the 5th failure of the run, want open", st)
	}

	b = New("d", cfg(5, 1, time.Hour), nil)
	fail(t, b, 4)
	report(t, b, nil)
	report(t, b, ErrOneEndpoint)
	fail(t, b, 4)
	if st := b.State(); st != Closed {
		t.Fatalf("%v: a success ended the run before one endpoint's failure and 4 more, want closed", st)
	}
}

// TestOneEndpointFailureInTheRate: the failure rate is a share of the
// destination's tries, and one endpoint's failures are failures in it.
func TestOneEndpointFailureInTheRate(t *testing.T) {
	c := cfg(1000, 1, time.Hour)
	c.FailureRate = &policy.FailureRate{Threshold: 0.5, MinRequests: 10, Window: time.Hour}
	b := New("d", c, nil)
	for range 5 {
		report(t, b, nil)
	}
	for range 4 {
		report(t, b, ErrOneEndpoint)
	}
	if st := b.State(); st != Closed {
		t.Fatalf("%v after 4 failures in 9 tries (under minRequests), want closed", st)
	}
	report(t, b, ErrOneEndpoint)
	if st := b.State(); st != Open {
		t.Fatalf("%v after 5 failures in 10 tries (threshold 0.5), want open", st)
	}
	if w := b.Why(); w != "5 failures in 10 tries within 1h0m0s (failureRate.threshold: 0.5)" {
		t.Errorf("why %q", w)
	}
}

// TestOneEndpointFailureReopens: a half-open probe tests a destination
// that failed as a whole; its failure reopens the breaker whatever the
// balancer says of the endpoint (freeing its place let probe after probe
// reach dead pods while the breaker stayed half-open).
func TestOneEndpointFailureReopens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New("d", cfg(1, 2, time.Second), nil)
		fail(t, b, 1)
		time.Sleep(time.Second + time.Nanosecond)
		if st := b.State(); st != HalfOpen {
			t.Fatalf("%v after openTimeout, want half-open", st)
		}
		report(t, b, ErrOneEndpoint)
		if st := b.State(); st != Open {
			t.Fatalf("%v after a probe's failure of one endpoint, want open", st)
		}
	})
}

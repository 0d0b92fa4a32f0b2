package outbound

import (
	"testing"
	"testing/synctest"
	"time"
)

// TestSince: a request's later time is its start plus the monotonic time
// gone, to the nanosecond, and its wall clock moves with it; a request
// with no start reads the clock.
func TestSince(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		time.Sleep(1500 * time.Millisecond)
		now := since(start)
		if got := now.Sub(start); got != 1500*time.Millisecond {
			t.Errorf("since(start) - start = %v, want 1.5s", got)
		}
		if got := now.Round(0).Sub(start.Round(0)); got != 1500*time.Millisecond {
			t.Errorf("wall clock moved %v, want 1.5s", got)
		}
		if !now.Equal(time.Now()) {
			t.Errorf("since(start) = %v, time.Now() = %v", now, time.Now())
		}
		if z := since(time.Time{}); !z.Equal(time.Now()) {
			t.Errorf("since(zero) = %v, want time.Now() %v", z, time.Now())
		}
	})
}

// TestElapsed: the time gone since a request's start, on the monotonic
// clock, never 0 (a request's headers not yet ready), even where no time
// has gone.
func TestElapsed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if got := elapsed(start); got != 1 {
			t.Errorf("elapsed(start) at once = %v, want 1ns", got)
		}
		time.Sleep(1500 * time.Millisecond)
		if got := elapsed(start); got != 1500*time.Millisecond {
			t.Errorf("elapsed(start) = %v, want 1.5s", got)
		}
	})
}

// TestMono: the monotonic clock's time moves as time.Now's does, and
// tells idle times apart as Time.Sub did (a connection's, sweep and get).
func TestMono(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		before := mono()
		time.Sleep(idleTimeout)
		if got := mono() - before; got != idleTimeout {
			t.Errorf("mono() moved %v in %v", got, idleTimeout)
		}
	})
}

package retry

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestBudgetFloorAndRatio(t *testing.T) {
	now := int64(1000)
	b := NewBudget(0.2, 1) // floor: 1/s over a 10 s window = 10
	b.now = func() int64 { return now }
	got := 0
	for range 100 {
		if b.Withdraw() {
			got++
		}
	}
	if got != 10 {
		t.Fatalf("with no requests, %d retries allowed; want the floor of 10", got)
	}
	for range 100 {
		b.Request(time.Unix(now, 0))
	}
	got = 0
	for range 100 {
		if b.Withdraw() {
			got++
		}
	}
	if got != 20 {
		t.Fatalf("after 100 requests at ratio 0.2, %d more retries; want 20", got)
	}
	now += 11 // the window has passed: everything aged out
	got = 0
	for range 100 {
		if b.Withdraw() {
			got++
		}
	}
	if got != 10 {
		t.Fatalf("after the window, %d retries; want the floor of 10", got)
	}
}

func TestBackoffBounds(t *testing.T) {
	base, max := 10*time.Millisecond, 50*time.Millisecond
	for n := 1; n <= 8; n++ {
		ceiling := base << (n - 1)
		if ceiling > max {
			ceiling = max
		}
		for range 200 {
			d := Backoff(n, base, max)
			if d <= 0 || d > ceiling {
				t.Fatalf("Backoff(%d) = %v, want (0, %v]", n, d, ceiling)
			}
		}
	}
	if Backoff(3, 0, 0) != 0 {
		t.Fatal("zero base must not wait")
	}
}

// Concurrent retries must never take more than the budget holds.
func TestBudgetExactUnderConcurrency(t *testing.T) {
	for run := range 300 {
		b := NewBudget(0, 1)
		var got atomic.Int32
		var wg sync.WaitGroup
		for range 40 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if b.Withdraw() {
					got.Add(1)
				}
			}()
		}
		wg.Wait()
		if n := got.Load(); n != 10 {
			t.Fatalf("run %d: %d withdrawals allowed, want exactly 10", run, n)
		}
	}
}

// TestBudgetRequestZeroTime: a request with no start (the zero Time,
// whose Unix seconds are negative) counts at the budget's own clock, not
// at a negative bucket.
func TestBudgetRequestZeroTime(t *testing.T) {
	now := int64(1000)
	b := NewBudget(0.5, 0)
	b.now = func() int64 { return now }
	for range 4 {
		b.Request(time.Time{})
	}
	got := 0
	for range 10 {
		if b.Withdraw() {
			got++
		}
	}
	if got != 2 {
		t.Fatalf("after 4 requests with no start at ratio 0.5, %d retries; want 2", got)
	}
}

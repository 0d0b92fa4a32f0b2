// Package retry holds the two pieces of retry policy that have state or
// arithmetic: the retry budget and the backoff.
package retry

import (
	"sync"
	"sync/atomic"
	"time"
)

// window is how far back the budget looks, in one-second buckets.
const window = 10

// Budget allows retries up to a ratio of the requests seen in the last
// ten seconds plus a floor per second, so that a failing service sees at
// most (1+ratio)× its normal load instead of (1+attempts)×. It is
// lock-free: requests only touch atomics.
type Budget struct {
	ratio float64
	floor int64 // retries always allowed per window
	// mu serialises withdrawals (the retry path only), so that concurrent
	// retries cannot both take the last one; requests stay lock-free.
	mu     sync.Mutex
	bucket [window]bucket
	now    func() int64 // unix seconds; a field so tests can move time
}

type bucket struct {
	reqSec   atomic.Int64
	reqs     atomic.Int64
	retrySec int64 // retries' second and count change under mu only
	retries  int64
}

// NewBudget returns a budget of ratio×requests + minPerSecond retries per
// second.
func NewBudget(ratio float64, minPerSecond int) *Budget {
	return &Budget{ratio: ratio, floor: int64(minPerSecond) * window, now: unixNow}
}

func unixNow() int64 { return time.Now().Unix() }

// Request records one original request, started at at: the caller has
// read the clock as the request began, and a clock read per request was
// ~0.7 % of the sidecar's user time at the maximum rate. It is lock-free:
// requests counted at the very moment their bucket rolls over to a new
// second may be lost, which only makes the budget a little stricter.
func (b *Budget) Request(at time.Time) {
	s := at.Unix()
	if at.IsZero() {
		s = b.now() // not a time: never from the sidecar, whose requests all have a start
	}
	bk := &b.bucket[s%window]
	if old := bk.reqSec.Load(); old != s && bk.reqSec.CompareAndSwap(old, s) {
		bk.reqs.Store(0)
	}
	bk.reqs.Add(1)
}

// Withdraw takes one retry from the budget, reporting whether it was
// there. Retries are counted exactly: concurrent retries never overdraw.
func (b *Budget) Withdraw() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.now()
	var reqs, retries int64
	for i := range b.bucket {
		bk := &b.bucket[i]
		if s-bk.reqSec.Load() < window {
			reqs += bk.reqs.Load()
		}
		if s-bk.retrySec < window {
			retries += bk.retries
		}
	}
	if float64(retries) >= b.ratio*float64(reqs)+float64(b.floor) {
		return false
	}
	bk := &b.bucket[s%window]
	if bk.retrySec != s {
		bk.retrySec, bk.retries = s, 0
	}
	bk.retries++
	return true
}

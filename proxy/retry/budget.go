// Package retry holds the two pieces of retry policy that have state or
// arithmetic: the retry budget and the backoff.
package retry

import (
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
	ratio  float64
	floor  int64 // retries always allowed per window
	bucket [window]bucket
	now    func() int64 // unix seconds; a field so tests can move time
}

type bucket struct {
	sec     atomic.Int64
	reqs    atomic.Int64
	retries atomic.Int64
}

// NewBudget returns a budget of ratio×requests + minPerSecond retries per
// second.
func NewBudget(ratio float64, minPerSecond int) *Budget {
	return &Budget{ratio: ratio, floor: int64(minPerSecond) * window, now: unixNow}
}

func unixNow() int64 { return time.Now().Unix() }

func (b *Budget) current() *bucket {
	s := b.now()
	bk := &b.bucket[s%window]
	if old := bk.sec.Load(); old != s && bk.sec.CompareAndSwap(old, s) {
		// Counts landing between the swap and these stores are lost; the
		// budget is an estimate, and this keeps it lock-free.
		bk.reqs.Store(0)
		bk.retries.Store(0)
	}
	return bk
}

// Request records one original request.
func (b *Budget) Request() { b.current().reqs.Add(1) }

// Withdraw takes one retry from the budget, reporting whether it was there.
func (b *Budget) Withdraw() bool {
	s := b.now()
	var reqs, retries int64
	for i := range b.bucket {
		bk := &b.bucket[i]
		if s-bk.sec.Load() < window {
			reqs += bk.reqs.Load()
			retries += bk.retries.Load()
		}
	}
	if float64(retries) >= b.ratio*float64(reqs)+float64(b.floor) {
		return false
	}
	b.current().retries.Add(1)
	return true
}

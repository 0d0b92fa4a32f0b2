package retry

import (
	"math/rand/v2"
	"time"
)

// Backoff returns the wait before retry n (1 for the first retry):
// exponential from base, capped at max, with full jitter so that clients
// that failed together do not retry together.
func Backoff(n int, base, max time.Duration) time.Duration {
	if base <= 0 {
		return 0
	}
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if max > 0 && d > max {
		d = max
	}
	return rand.N(d) + 1
}

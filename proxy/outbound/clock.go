package outbound

import "time"

// since is the time it is now for a request that began at start, a
// time.Now reading: start plus the time gone since, one read of the
// monotonic clock where time.Now reads the wall clock too. The request's
// later times (its answer, its try's start, its end) are read so: the
// clock reads were 5.5 % of the sidecar's user time at the maximum rate,
// two per time.Now (docs/benchmarks.md, "Fewer instructions per
// request"). A time read so is never before start, and the durations
// taken from it are the monotonic clock's, as time.Now's are.
func since(start time.Time) time.Time {
	if start.IsZero() {
		return time.Now()
	}
	return start.Add(time.Since(start))
}

package outbound

import "time"

// since is the time it is now for a request that began at start, a
// time.Now reading: start plus the time gone since, one read of the
// monotonic clock where time.Now reads the wall clock too. The request's
// later times it compares with deadlines are read so (its answer's
// latency is elapsed, a duration, since 2026-12-07): the
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

// elapsed is the time gone since start, a time.Now reading, where a
// request keeps a later moment only to measure from start (its response
// headers' latency): one monotonic read, no time.Time arithmetic (a
// Time.Add and a Time.Sub, ~100 instructions a request). Never 0, which
// says "not yet".
func elapsed(start time.Time) time.Duration {
	return max(time.Since(start), 1)
}

// epoch is the zero of mono's clock.
var epoch = time.Now()

// mono is the time on the monotonic clock, from epoch: what the fast
// transport keeps of when a connection went idle, and reads to judge its
// idleness, per request. One clock read and an integer to compare, where
// time.Now reads the wall clock too and Time.Sub reads both times' flags
// (docs/benchmarks.md, "Fewer instructions per request, measured"). A
// per-try deadline made from it (epoch.Add) is a time.Time as
// time.Now().Add would make it, its monotonic reading kept.
func mono() time.Duration { return time.Since(epoch) }

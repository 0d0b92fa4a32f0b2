package policy

import (
	"fmt"
	"strings"
	"time"
)

// Upper bounds beyond MaxAttempts. The breaker counts in uint32 and a
// value near those limits is a typo, not a policy, so they are rejected
// rather than silently wrapped by the proxy.
const (
	MaxConsecutiveFailures = 1000
	MaxHalfOpenRequests    = 1000
	MaxMinRequests         = 1_000_000
	MaxMinPerSecond        = 1_000_000
)

// Bounds of outlier detection's ejection times. Below a millisecond an
// ejection would end before the next request (and Linkerd's durations
// have no smaller unit); an ejection of a pod for more than a day is a
// typo, not a policy, and a day keeps base × ejections far from
// overflowing time.Duration.
const (
	ShortestEjectionTime    = time.Millisecond
	LongestBaseEjectionTime = time.Hour
	LongestEjectionTime     = 24 * time.Hour
)

// LongestTimeout bounds timeout and perTryTimeout. A request that may
// take more than a day is a stream that should have no timeout, and a
// figure past it is a typo; near time.Duration's limit, the exports'
// rounding up to whole milliseconds (Envoy, Linkerd) overflowed into a
// negative timeout.
const LongestTimeout = 24 * time.Hour

// Validate checks a defaulted policy, as Decode returns it, against the
// bounds of the policy reference. Decode runs it on every policy it
// returns; a sidecar that receives policies from elsewhere (xDS) runs it
// before trusting them. The errors carry field paths but no positions.
func (p *ResiliencePolicy) Validate() error {
	return validateSpec(&p.Spec).err()
}

type checker struct{ errs ErrorList }

func (c *checker) fail(field, format string, args ...any) {
	c.errs = append(c.errs, &Error{Field: field, Msg: fmt.Sprintf(format, args...)})
}

// positiveUpTo is positive with an upper bound.
func (c *checker) positiveUpTo(field string, d, hi time.Duration) {
	if d <= 0 || d > hi {
		c.fail(field, "must be > 0 and <= %v, got %v", hi, d)
	}
}

func (c *checker) durationRange(field string, d, lo, hi time.Duration) {
	if d < lo || d > hi {
		c.fail(field, "must be between %v and %v, got %v", lo, hi, d)
	}
}

func (c *checker) intRange(field string, v, lo, hi int) {
	if v < lo || v > hi {
		c.fail(field, "must be between %d and %d, got %d", lo, hi, v)
	}
}

func validateSpec(s *Spec) ErrorList {
	var c checker
	if norm, err := NormalizeService(s.Service); err != nil {
		c.fail("spec.service", "%v", err)
	} else if norm != s.Service {
		c.fail("spec.service", "%q is not in canonical form %q", s.Service, norm)
	}
	if s.Timeout < 0 || s.Timeout > LongestTimeout {
		c.fail("spec.timeout", "must be > 0 and <= %v (omit it for no timeout), got %v", LongestTimeout, s.Timeout)
	}
	if r := s.Retries; r != nil {
		validateRetries(&c, r, s.Timeout)
	}
	if s.CircuitBreaker == nil {
		c.fail("spec.circuitBreaker", "missing (Decode always sets it)")
	} else {
		validateBreaker(&c, s.CircuitBreaker)
	}
	if s.OutlierDetection == nil {
		c.fail("spec.outlierDetection", "missing (Decode always sets it)")
	} else {
		validateOutlier(&c, s.OutlierDetection)
	}
	return c.errs
}

func validateRetries(c *checker, r *Retries, timeout time.Duration) {
	const p = "spec.retries."
	c.intRange(p+"attempts", r.Attempts, 0, MaxAttempts)
	switch {
	case r.PerTryTimeout < 0 || r.PerTryTimeout > LongestTimeout:
		c.fail(p+"perTryTimeout", "must be > 0 and <= %v (omit it for none), got %v", LongestTimeout, r.PerTryTimeout)
	case timeout > 0 && r.PerTryTimeout > timeout:
		c.fail(p+"perTryTimeout", "must be <= timeout (%v), got %v", timeout, r.PerTryTimeout)
	}
	if isEmpty(r.RetryOn) {
		c.fail(p+"retryOn", "must not be empty: omit it for the default %v, or set attempts: 0", yamlList(DefaultRetryOn))
	}
	c.positiveUpTo(p+"backoff.base", r.Backoff.Base, MaxStateDuration)
	c.positiveUpTo(p+"backoff.max", r.Backoff.Max, MaxStateDuration)
	if r.Backoff.Base > 0 && r.Backoff.Max > 0 && r.Backoff.Max < r.Backoff.Base {
		c.fail(p+"backoff.max", "must be >= base (%v), got %v", r.Backoff.Base, r.Backoff.Max)
	}
	// The negated form also rejects NaN.
	if !(r.Budget.Ratio >= 0 && r.Budget.Ratio <= 1) {
		c.fail(p+"budget.ratio", "must be between 0 and 1, got %v", r.Budget.Ratio)
	}
	c.intRange(p+"budget.minPerSecond", r.Budget.MinPerSecond, 0, MaxMinPerSecond)
}

func validateBreaker(c *checker, b *CircuitBreaker) {
	const p = "spec.circuitBreaker."
	c.intRange(p+"consecutiveFailures", b.ConsecutiveFailures, 1, MaxConsecutiveFailures)
	c.positiveUpTo(p+"openTimeout", b.OpenTimeout, MaxStateDuration)
	c.intRange(p+"halfOpenRequests", b.HalfOpenRequests, 1, MaxHalfOpenRequests)
	if isEmpty(b.FailOn) {
		c.fail(p+"failOn", "must not be empty: omit it for the default %v", yamlList(DefaultFailOn))
	}
	if fr := b.FailureRate; fr != nil {
		// The negated form also rejects NaN.
		if !(fr.Threshold > 0 && fr.Threshold <= 1) {
			c.fail(p+"failureRate.threshold", "must be > 0 and <= 1, got %v", fr.Threshold)
		}
		c.intRange(p+"failureRate.minRequests", fr.MinRequests, 1, MaxMinRequests)
		c.positiveUpTo(p+"failureRate.window", fr.Window, MaxStateDuration)
	}
}

// validateOutlier checks the ejection settings even when
// consecutiveFailures is 0 (off): turning ejection back on must not
// uncover a mistake written long ago.
func validateOutlier(c *checker, o *OutlierDetection) {
	const p = "spec.outlierDetection."
	c.intRange(p+"consecutiveFailures", o.ConsecutiveFailures, 0, MaxConsecutiveFailures)
	c.durationRange(p+"baseEjectionTime", o.BaseEjectionTime, ShortestEjectionTime, LongestBaseEjectionTime)
	c.durationRange(p+"maxEjectionTime", o.MaxEjectionTime, ShortestEjectionTime, LongestEjectionTime)
	if o.BaseEjectionTime > 0 && o.MaxEjectionTime > 0 && o.MaxEjectionTime < o.BaseEjectionTime {
		c.fail(p+"maxEjectionTime", "must be >= baseEjectionTime (%v), got %v", o.BaseEjectionTime, o.MaxEjectionTime)
	}
	c.intRange(p+"maxEjectionPercent", o.MaxEjectionPercent, 1, 100)
}

func isEmpty(c Conditions) bool { return c.Classes == 0 && len(c.Codes) == 0 && c.GRPC == 0 }

// yamlList spells conditions the way a user would write them back.
func yamlList(c Conditions) string { return "[" + strings.Join(c.Strings(), ", ") + "]" }

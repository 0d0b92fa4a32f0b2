// Package breaker is the per-destination circuit breaker of the sidecar: a
// thin layer over sony/gobreaker's two-step breaker that speaks policy, not
// gobreaker.
//
// The two-step form suits a proxy: Allow is called before a try is sent and
// the outcome is reported when its response headers (or its error) arrive,
// without wrapping the try in a closure.
package breaker

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/sony/gobreaker/v2"
)

// State is the breaker's state.
type State = gobreaker.State

// The states, re-exported so callers need not import gobreaker.
const (
	Closed   = gobreaker.StateClosed
	HalfOpen = gobreaker.StateHalfOpen
	Open     = gobreaker.StateOpen
)

// Outcomes reported to a Done func: nil is a success.
var (
	// ErrFailed is an outcome that the policy's failOn counts.
	ErrFailed = errors.New("failure")
	// ErrIgnored is an outcome that says nothing about the upstream's
	// health, such as a client that went away; it counts neither way.
	ErrIgnored = errors.New("ignored")
)

// Done reports the outcome of one allowed try: nil, ErrFailed or ErrIgnored.
type Done = func(outcome error)

// Breaker guards one destination.
type Breaker struct {
	cb       *gobreaker.TwoStepCircuitBreaker[struct{}]
	cfg      policy.CircuitBreaker
	openedAt atomic.Int64 // unix nanoseconds of the last transition to open
	state    atomic.Int32 // the state as of the last transition
	// why is the rule that last opened the breaker, for /debug/breakers
	// (its counts start again at zero as it opens).
	why atomic.Pointer[string]
}

// OnChange is told of every state transition; it is called with the
// breaker's lock held and must not call back into the breaker.
type OnChange func(destination string, from, to State)

// New returns a closed breaker for the destination, configured by cfg.
func New(destination string, cfg *policy.CircuitBreaker, onChange OnChange) *Breaker {
	b := &Breaker{cfg: *cfg}
	st := gobreaker.Settings{
		Name:        destination,
		MaxRequests: uint32(cfg.HalfOpenRequests),
		Timeout:     cfg.OpenTimeout,
		ReadyToTrip: b.readyToTrip,
		IsExcluded:  func(err error) bool { return err == ErrIgnored },
		OnStateChange: func(name string, from, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				b.openedAt.Store(time.Now().UnixNano())
				if from == gobreaker.StateHalfOpen {
					b.why.Store(&probeFailed)
				}
			}
			b.state.Store(int32(to))
			if onChange != nil {
				onChange(name, from, to)
			}
		},
	}
	if fr := cfg.FailureRate; fr != nil {
		// A rolling window of ten buckets: old failures age out smoothly
		// instead of all at once at the end of a fixed interval.
		st.Interval = fr.Window
		st.BucketPeriod = max(fr.Window/10, time.Millisecond)
	}
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](st)
	return b
}

// readyToTrip opens the breaker on the Nth consecutive failure, not after
// it as gobreaker's default does, so that the (N+1)th request fails fast.
func (b *Breaker) readyToTrip(c gobreaker.Counts) bool {
	if int(c.ConsecutiveFailures) >= b.cfg.ConsecutiveFailures {
		why := fmt.Sprintf("%d failures in a row (consecutiveFailures: %d)", c.ConsecutiveFailures, b.cfg.ConsecutiveFailures)
		b.why.Store(&why)
		return true
	}
	if fr := b.cfg.FailureRate; fr != nil {
		done := c.TotalSuccesses + c.TotalFailures
		if int(done) >= fr.MinRequests && float64(c.TotalFailures) >= fr.Threshold*float64(done) {
			why := fmt.Sprintf("%d failures in %d tries within %v (failureRate.threshold: %v)", c.TotalFailures, done, fr.Window, fr.Threshold)
			b.why.Store(&why)
			return true
		}
	}
	return false
}

var probeFailed = "a half-open probe failed"

// Why is the rule that last opened the breaker ("5 failures in a row
// (consecutiveFailures: 5)"), or "" while it is closed.
func (b *Breaker) Why() string {
	if b.State() == Closed {
		return ""
	}
	if w := b.why.Load(); w != nil {
		return *w
	}
	return ""
}

// Config returns the settings the breaker was built from.
func (b *Breaker) Config() *policy.CircuitBreaker { return &b.cfg }

// Allow asks to send one try. It returns ErrOpen when the breaker is open
// or, half-open, has already let its probes through.
func (b *Breaker) Allow() (Done, error) {
	done, err := b.cb.Allow()
	if err != nil {
		return nil, ErrOpen
	}
	return done, nil
}

// ErrOpen is returned by Allow when the try must not be sent.
var ErrOpen = errors.New("circuit breaker is open")

// State returns the current state; an open breaker whose timeout has
// passed reports half-open.
func (b *Breaker) State() State { return b.cb.State() }

// Cached returns the state as of the last transition without taking the
// breaker's lock: for logs and spans, where a breaker whose open timeout
// has just passed may still read open until the next request moves it.
func (b *Breaker) Cached() State { return State(b.state.Load()) }

// RetryAfter is how long until an open breaker lets probes through again,
// rounded up to whole seconds and at least one: the value of the
// Retry-After header.
func (b *Breaker) RetryAfter(now time.Time) time.Duration {
	until := time.Unix(0, b.openedAt.Load()).Add(b.cfg.OpenTimeout)
	d := until.Sub(now)
	if d < time.Second {
		return time.Second
	}
	return (d + time.Second - 1).Truncate(time.Second)
}

// OpenUntil is when an open breaker half-opens; zero unless open.
func (b *Breaker) OpenUntil() time.Time {
	if b.State() != Open {
		return time.Time{}
	}
	return time.Unix(0, b.openedAt.Load()).Add(b.cfg.OpenTimeout)
}

// Counts are the breaker's counters in its current state and window.
type Counts struct {
	Requests             uint32 `json:"requests"`
	TotalSuccesses       uint32 `json:"totalSuccesses"`
	TotalFailures        uint32 `json:"totalFailures"`
	ConsecutiveSuccesses uint32 `json:"consecutiveSuccesses"`
	ConsecutiveFailures  uint32 `json:"consecutiveFailures"`
}

// Counts returns a copy of the counters.
func (b *Breaker) Counts() Counts {
	c := b.cb.Counts()
	return Counts{
		Requests:             c.Requests,
		TotalSuccesses:       c.TotalSuccesses,
		TotalFailures:        c.TotalFailures,
		ConsecutiveSuccesses: c.ConsecutiveSuccesses,
		ConsecutiveFailures:  c.ConsecutiveFailures,
	}
}

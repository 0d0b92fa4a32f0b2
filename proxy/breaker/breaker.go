// Package breaker is the per-destination circuit breaker of the sidecar:
// a two-step breaker (Allow before a try is sent, the outcome reported
// when the try ends) with the states, counts and rolling window of
// sony/gobreaker's, which it replaced, and two differences that a proxy
// needs:
//
//   - an outcome counts when the try ends, in the window as it is then:
//     gobreaker counts it in the bucket where the try began and drops it
//     once that bucket left the window, so that with a failureRate window
//     of 10s a try that timed out after 15s was no failure at all, not
//     even one of consecutiveFailures;
//   - a half-open probe holds its place for at most openTimeout: one that
//     never ends (a stream, a body nobody reads) would otherwise keep the
//     breaker half-open, refusing every other request, for as long as it
//     lives.
package breaker

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/policy"
)

// State is the breaker's state.
type State int

// The states.
const (
	Closed State = iota
	HalfOpen
	Open
)

// String is the state's name: closed, half-open or open.
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case HalfOpen:
		return "half-open"
	case Open:
		return "open"
	}
	return fmt.Sprintf("unknown state: %d", int(s))
}

// Outcomes reported to a Done func: nil is a success.
var (
	// ErrFailed is an outcome that the policy's failOn counts.
	ErrFailed = errors.New("failure")
	// ErrIgnored is an outcome that says nothing about the upstream's
	// health, such as a client that went away; it counts neither way.
	ErrIgnored = errors.New("ignored")
	// ErrOneEndpoint is a failure that one endpoint's run of failures
	// repeats while another endpoint of the destination serves: that
	// endpoint's business (per-endpoint ejection), not a sign that the
	// destination fails as a whole. A pod that crashed with six calls in
	// flight, or one that fails fast from its start, gave the breaker's
	// consecutiveFailures five failures in a row before a healthy pod's
	// success could end the run: one pod of four opened the breaker of
	// all four (docs/policy.md, "Circuit breaker"). consecutiveFailures
	// counts it neither way (the run of the destination's failures
	// neither grows nor ends); failureRate, a share of the destination's
	// tries, counts it as the failure it is. A half-open probe's is a
	// failure: the probes test a destination that failed as a whole, and
	// freeing their places let a half-open breaker pass probe after probe
	// to dead pods, never opening again.
	ErrOneEndpoint = errors.New("failure of one endpoint")
	// ErrYielded frees a half-open probe's place for its retry while the
	// try's own outcome is still to come: Done is called again, once, with
	// it (ErrIgnored once the retry is sent, judged instead; the try's
	// failure if the breaker refused the retry and the try is the app's
	// answer). Freed for good (ErrIgnored) before its retry asked, a probe
	// whose retry another request's probe beat to the place was a failure
	// the app got that no breaker heard. A yielded probe holds no place,
	// so openTimeout does not release it. Outside half-open it is nothing.
	ErrYielded = errors.New("yielded to its retry")
)

// Done reports the outcome of one allowed try: nil, ErrFailed,
// ErrOneEndpoint or ErrIgnored. It is to be called once, or twice when
// the first is ErrYielded.
type Done = func(outcome error)

// Breaker guards one destination.
type Breaker struct {
	name string
	cfg  policy.CircuitBreaker

	mu       sync.Mutex
	onChange OnChange // nil once retired
	st       State
	gen      uint64    // changes with every transition: outcomes of older tries are dropped
	until    time.Time // open: when it half-opens
	c        Counts
	// The rolling window (failureRate; nil buckets: counts never expire):
	// bucket i covers [start+i·period, start+(i+1)·period), kept at
	// buckets[i%len]; age is the newest bucket's i.
	buckets []bucket
	period  time.Duration
	start   time.Time
	age     int64
	// probes are the half-open probes in flight; released ones are gone
	// from it (their place is free, their outcome no longer counts).
	probes []*probe

	openedAt atomic.Int64 // unix nanoseconds of the last transition to open
	state    atomic.Int32 // the state as of the last transition
	// why is the rule that last opened the breaker, for /debug/breakers
	// (its counts start again at zero as it opens).
	why atomic.Pointer[string]
}

// bucket is one slice of the rolling window. runFailures and
// runSuccesses are the part of the current run of failures (successes)
// that fell in it: the run ages out of the window with its buckets.
type bucket struct {
	requests, successes, failures uint32
	runFailures, runSuccesses     uint32
}

// probe is a half-open try in flight.
type probe struct {
	at    time.Time
	ended bool // reported or released
}

// OnChange is told of every state transition until the breaker is
// retired (Retire); it is called with the breaker's lock held and must not
// call back into the breaker.
type OnChange func(destination string, from, to State)

// New returns a closed breaker for the destination, configured by cfg.
func New(destination string, cfg *policy.CircuitBreaker, onChange OnChange) *Breaker {
	b := &Breaker{name: destination, cfg: *cfg, onChange: onChange}
	if b.cfg.HalfOpenRequests < 1 {
		b.cfg.HalfOpenRequests = 1
	}
	if b.cfg.OpenTimeout <= 0 {
		b.cfg.OpenTimeout = policy.DefaultCircuitBreaker().OpenTimeout
	}
	if fr := cfg.FailureRate; fr != nil && fr.Window > 0 {
		// Ten buckets: old outcomes age out smoothly instead of all at
		// once at the end of a fixed interval.
		b.period = max(fr.Window/10, time.Millisecond)
		b.buckets = make([]bucket, (fr.Window+b.period-1)/b.period)
	}
	b.start = time.Now()
	return b
}

// Allow asks to send one try. It returns ErrOpen when the breaker is open
// or, half-open, has already let its probes through.
func (b *Breaker) Allow() (Done, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var c clock
	switch b.current(&c) {
	case Open:
		return nil, ErrOpen
	case HalfOpen:
		now := c.now()
		if len(b.probes)+int(b.c.TotalSuccesses) >= b.cfg.HalfOpenRequests {
			b.releaseStale(now)
			if len(b.probes)+int(b.c.TotalSuccesses) >= b.cfg.HalfOpenRequests {
				return nil, ErrOpen
			}
		}
		p := &probe{at: now}
		b.probes = append(b.probes, p)
		b.c.Requests++
		gen := b.gen
		return func(outcome error) { b.probeDone(gen, p, outcome) }, nil
	}
	b.c.Requests++
	if b.buckets != nil {
		b.buckets[b.age%int64(len(b.buckets))].requests++
	}
	gen := b.gen
	return func(outcome error) { b.done(gen, outcome) }, nil
}

// ErrOpen is returned by Allow when the try must not be sent.
var ErrOpen = errors.New("circuit breaker is open")

// releaseStale frees the places of the probes that have been in flight
// for openTimeout or longer; mu is held.
func (b *Breaker) releaseStale(now time.Time) {
	kept := b.probes[:0]
	for _, p := range b.probes {
		if now.Sub(p.at) >= b.cfg.OpenTimeout {
			p.ended = true
			continue
		}
		kept = append(kept, p)
	}
	clear(b.probes[len(kept):])
	b.probes = kept
}

func (b *Breaker) probeDone(gen uint64, p *probe, outcome error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p.ended {
		return
	}
	p.ended = outcome != ErrYielded
	if gen != b.gen {
		return
	}
	if i := slices.Index(b.probes, p); i >= 0 {
		b.probes = slices.Delete(b.probes, i, i+1)
	}
	now := time.Now()
	switch outcome {
	case ErrIgnored, ErrYielded:
	case nil:
		b.c.TotalSuccesses++
		b.c.ConsecutiveSuccesses++
		b.c.ConsecutiveFailures = 0
		if int(b.c.ConsecutiveSuccesses) >= b.cfg.HalfOpenRequests {
			b.setState(Closed, now)
		}
	default:
		b.c.TotalFailures++
		b.why.Store(&probeFailed)
		b.setState(Open, now)
	}
}

func (b *Breaker) done(gen uint64, outcome error) {
	if outcome == ErrIgnored || outcome == ErrYielded {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var c clock
	if b.current(&c) != Closed || gen != b.gen {
		return // the breaker has moved on since the try began
	}
	var bk *bucket
	if b.buckets != nil {
		bk = &b.buckets[b.age%int64(len(b.buckets))]
	}
	if outcome == ErrOneEndpoint {
		// In the share, not in the run.
		if bk != nil {
			bk.failures++
		}
		b.c.TotalFailures++
		if b.readyToTrip() {
			b.setState(Open, c.now())
		}
		return
	}
	if outcome == nil {
		if bk != nil {
			if b.c.ConsecutiveFailures > 0 {
				b.endRun(false)
			}
			bk.successes++
			bk.runSuccesses++
		}
		b.c.TotalSuccesses++
		b.c.ConsecutiveSuccesses++
		b.c.ConsecutiveFailures = 0
		return
	}
	if bk != nil {
		if b.c.ConsecutiveSuccesses > 0 {
			b.endRun(true)
		}
		bk.failures++
		bk.runFailures++
	}
	b.c.TotalFailures++
	b.c.ConsecutiveFailures++
	b.c.ConsecutiveSuccesses = 0
	if b.readyToTrip() {
		b.setState(Open, c.now())
	}
}

// endRun ends the buckets' share of the run of successes (failure true)
// or failures; mu is held.
func (b *Breaker) endRun(failure bool) {
	for i := range b.buckets {
		if failure {
			b.buckets[i].runSuccesses = 0
		} else {
			b.buckets[i].runFailures = 0
		}
	}
}

// readyToTrip opens the breaker on the Nth consecutive failure, not after
// it, so that the (N+1)th request fails fast; mu is held.
func (b *Breaker) readyToTrip() bool {
	c := b.c
	if int(c.ConsecutiveFailures) >= b.cfg.ConsecutiveFailures {
		why := fmt.Sprintf("%d failures in a row (consecutiveFailures: %d)", c.ConsecutiveFailures, b.cfg.ConsecutiveFailures)
		b.why.Store(&why)
		return true
	}
	if fr := b.cfg.FailureRate; fr != nil {
		done := c.TotalSuccesses + c.TotalFailures
		// The share itself, not failures ≥ threshold×done: 55 failures
		// of 100 reach a threshold of 0.55, whose product is 55.000…01.
		if int(done) >= fr.MinRequests && float64(c.TotalFailures)/float64(done) >= fr.Threshold {
			why := fmt.Sprintf("%d failures in %d tries within %v (failureRate.threshold: %v)", c.TotalFailures, done, fr.Window, fr.Threshold)
			b.why.Store(&why)
			return true
		}
	}
	return false
}

// current moves the breaker along with the time (an open breaker whose
// timeout has passed half-opens, a window rolls) and returns its state;
// mu is held. It reads c only where the time moves something: a closed
// breaker without a failure-rate window decides a try without it.
func (b *Breaker) current(c *clock) State {
	switch b.st {
	case Open:
		if now := c.now(); b.until.Before(now) {
			b.setState(HalfOpen, now)
		}
	case Closed:
		if b.buckets != nil {
			b.roll(c.now())
		}
	}
	return b.st
}

// clock is the time read at its first use, once: Allow and done read it
// only when the breaker's state needs it, where two time.Now a request
// cost ~160 instructions (docs/benchmarks.md, "Fewer instructions per
// request, measured").
type clock struct{ t time.Time }

func (c *clock) now() time.Time {
	if c.t.IsZero() {
		c.t = time.Now()
	}
	return c.t
}

// at is a clock that reads t.
func at(t time.Time) *clock { return &clock{t} }

// roll moves the window up to now, dropping the buckets that left it;
// mu is held.
func (b *Breaker) roll(now time.Time) {
	age := int64(now.Sub(b.start) / b.period)
	n := int64(len(b.buckets))
	if age <= b.age {
		return
	}
	if age-b.age >= n {
		clear(b.buckets)
		b.c = Counts{}
		b.age = age
		return
	}
	for b.age < age {
		b.age++
		bk := &b.buckets[b.age%n]
		b.c.Requests -= min(b.c.Requests, bk.requests)
		b.c.TotalSuccesses -= min(b.c.TotalSuccesses, bk.successes)
		b.c.TotalFailures -= min(b.c.TotalFailures, bk.failures)
		b.c.ConsecutiveSuccesses -= min(b.c.ConsecutiveSuccesses, bk.runSuccesses)
		b.c.ConsecutiveFailures -= min(b.c.ConsecutiveFailures, bk.runFailures)
		*bk = bucket{}
	}
}

// setState moves to state with fresh counts; mu is held.
func (b *Breaker) setState(to State, now time.Time) {
	from := b.st
	if from == to {
		return
	}
	b.st = to
	b.gen++
	b.c = Counts{}
	clear(b.buckets)
	b.start, b.age = now, 0
	for _, p := range b.probes {
		p.ended = true
	}
	clear(b.probes)
	b.probes = b.probes[:0]
	if to == Open {
		b.until = now.Add(b.cfg.OpenTimeout)
		b.openedAt.Store(now.UnixNano())
	}
	b.state.Store(int32(to))
	if b.onChange != nil {
		b.onChange(b.name, from, to)
	}
}

var probeFailed = "a half-open probe failed"

// Retire is for a breaker that a policy reload dropped or
// POST /debug/breakers/reset replaced: it closes the breaker, telling
// onChange of that move if it was not closed, and detaches it, all under
// mu. The tries it allowed before outlive it (a half-open probe in flight,
// a request that took the destination before the swap): their outcomes
// must not move the live series of the destination, which its successor
// now reports, so onChange is cleared (whatever the retired breaker does
// next is counted nowhere) and the generation bumped (their outcomes are
// dropped). Reading the state and counting the move in one critical
// section leaves no gap for a probe's failure to count in between.
func (b *Breaker) Retire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	b.current(at(now)) // an open breaker past its timeout leaves half-open
	b.setState(Closed, now)
	b.onChange = nil
	// setState bumped gen only if the breaker was not closed: the tries
	// a closed breaker allowed count no more either (five failures
	// pending on a consecutiveFailures: 5 breaker would open it).
	b.gen++
}

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

// State returns the current state; an open breaker whose timeout has
// passed reports half-open.
func (b *Breaker) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.current(new(clock))
}

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
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.current(new(clock)) != Open {
		return time.Time{}
	}
	return b.until
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
	b.mu.Lock()
	defer b.mu.Unlock()
	b.current(new(clock))
	return b.c
}

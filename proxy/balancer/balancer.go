// Package balancer spreads one destination's requests over its endpoints,
// the way Linkerd balances and Envoy ejects.
//
// Choice: power of two choices (P2C) over a peak EWMA of latency weighted by
// the requests in flight, as Linkerd's balancer (tower's PeakEwma, itself
// from Finagle). Two distinct endpoints are drawn at random among the
// eligible ones and the one with the lower cost, estimate × (in flight + 1),
// wins. P2C needs no global ordering, so a pick reads two endpoints' atomics
// and nothing shared by all of them; and it avoids the herd that "always the
// least loaded" causes when many sidecars see the same numbers. The
// estimate is peak-sensitive: a sample above it replaces it at once, one
// below pulls it down only with exp(-Δt/τ), τ = 10 s. So a pod that turns
// slow loses its traffic on its first slow answer and wins it back only
// after it has been fast for a while. A new endpoint starts at Linkerd's
// default RTT of 30 ms, and an estimate that no sample has refreshed decays
// toward zero as it ages (as in tower and Finagle), so an endpoint shunned
// for being slow is tried again now and then and can show that it recovered.
//
// Failures: latency alone would reward a broken pod, because an error
// answered in 1 ms looks faster than any real answer and P2C would send it
// most of the traffic until ejection. A failed try therefore counts as a
// penalty latency, never as a fast sample: see [FailurePenalty].
//
// Ejection: per endpoint, as Envoy's outlier detection. ConsecutiveFailures
// failed tries in a row on one endpoint eject it for BaseEjectionTime ×
// (its ejection count), at most MaxEjectionTime, unless more than
// MaxEjectionPercent of the endpoints would then be out. Each
// BaseEjectionTime an endpoint then spends without being ejected again
// lowers its count by one, so a flapping pod stays out longer each time and
// a recovered one is back at the base. Ejections end by time, checked
// lazily: there are no timers and no goroutines.
//
// Eligibility: ready endpoints that are not ejected; if there are none,
// terminating ones that are not ejected (kube-proxy's fallback, so a
// rollout's last old pods still serve); if every endpoint is ejected, all
// of them ("panic mode", as Envoy's panic threshold: availability beats
// ejection, and a whole service failing is the destination's circuit
// breaker's business, not the balancer's).
//
// The hot path (Pick, Start, Done) does not allocate and takes no lock that
// all endpoints share: the endpoint list is an immutable slice behind an
// atomic pointer, each endpoint's numbers are atomics, Done takes only its
// endpoint's mutex, and random numbers come from math/rand/v2's lock-free
// top-level functions. The one exception is the rare failure that reaches
// ConsecutiveFailures: deciding an ejection against MaxEjectionPercent
// takes a balancer-wide mutex, so two endpoints cannot both take the last
// free ejection slot.
package balancer

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// DefaultRTT is the estimate of an endpoint before its first answer:
	// linkerd2-proxy's EWMA_DEFAULT_RTT.
	DefaultRTT = 30 * time.Millisecond
	// DecayTime is the EWMA's time constant τ: linkerd2-proxy's EWMA_DECAY.
	DecayTime = 10 * time.Second
	// FailurePenalty is what a failed try counts as at least, a multiple of
	// the endpoint's own estimate: max(latency, FailurePenalty × estimate,
	// DefaultRTT), capped at MaxFailurePenalty (a try that really took
	// longer keeps its own latency), and never below the estimate.
	//
	// Why 10×: a failing endpoint must lose P2C against a healthy peer of
	// its own speed at once (it wins again only if that peer has 10× its
	// requests in flight), which steers traffic off it before outlier
	// detection has counted ConsecutiveFailures. Why at least DefaultRTT: a
	// failure is never cheaper than an endpoint nothing is known about.
	// Why at most MaxFailurePenalty: ejection, not the estimate, is what
	// takes a failing pod out, and it needs tries to count; a larger
	// penalty would only postpone the probes that let it count (the
	// estimate of an unused endpoint decays with τ, so a 1 s penalty is
	// tried again against 1 ms peers after about τ·ln(1000) ≈ 70 s).
	FailurePenalty = 10
	// MaxFailurePenalty caps the penalty of a failed try; see FailurePenalty.
	MaxFailurePenalty = time.Second

	// Zero Config times mean Envoy's defaults.
	defaultBaseEjectionTime = 30 * time.Second
	defaultMaxEjectionTime  = 300 * time.Second
)

// Config is the ejection policy (from the ResiliencePolicy's
// outlierDetection).
type Config struct {
	ConsecutiveFailures int           // failed tries in a row that eject an endpoint; 0: never eject
	BaseEjectionTime    time.Duration // ejection n lasts n × base (0: 30 s) ...
	MaxEjectionTime     time.Duration // ... at most this (0: 300 s; never below base)
	MaxEjectionPercent  int           // never more ejected at once than this share of Len() (floor), but at least one endpoint may always be ejected
}

func (c Config) normalized() Config {
	if c.ConsecutiveFailures < 0 {
		c.ConsecutiveFailures = 0
	}
	if c.BaseEjectionTime <= 0 {
		c.BaseEjectionTime = defaultBaseEjectionTime
	}
	if c.MaxEjectionTime <= 0 {
		c.MaxEjectionTime = defaultMaxEjectionTime
	}
	c.MaxEjectionTime = max(c.MaxEjectionTime, c.BaseEjectionTime)
	c.MaxEjectionPercent = min(max(c.MaxEjectionPercent, 0), 100)
	return c
}

// Target is an endpoint as the control plane gives it.
type Target struct {
	Addr        string // "10.1.2.3:8080" or "[fd00::1]:8080"
	Terminating bool   // serving but terminating: used only when no ready endpoint is left (as kube-proxy does)
}

// Clock tells the time; tests inject a fake one.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Balancer balances one destination's requests over its endpoints. It is
// safe for concurrent use.
type Balancer struct {
	// OnEject, if set before the balancer is used, is called (outside any
	// lock, on the goroutine whose Done ejected) with the address of each
	// endpoint that is ejected.
	OnEject func(addr string)

	clock Clock
	real  bool      // clock is the real one: now reads only the monotonic clock
	epoch time.Time // times are nanoseconds since epoch (monotonic with the real clock)
	cfg   atomic.Pointer[Config]
	set   atomic.Pointer[endpointSet]
	intn  func(n int) int // rand.IntN; tests set a seeded one

	updateMu sync.Mutex // serialises Update
	ejectMu  sync.Mutex // serialises ejection decisions (MaxEjectionPercent)
}

type endpointSet struct {
	eps    []*Endpoint
	byAddr map[string]*Endpoint
}

// New returns a balancer without endpoints; clock nil is the real clock.
func New(cfg Config, clock Clock) *Balancer {
	_, isReal := clock.(realClock)
	if clock == nil {
		clock, isReal = realClock{}, true
	}
	b := &Balancer{clock: clock, real: isReal, epoch: clock.Now(), intn: rand.IntN}
	b.SetConfig(cfg)
	b.set.Store(&endpointSet{})
	return b
}

// SetConfig replaces the ejection policy. Current ejections keep their end;
// the new policy applies from the next failure.
func (b *Balancer) SetConfig(cfg Config) {
	c := cfg.normalized()
	b.cfg.Store(&c)
}

// now is the time in nanoseconds since the balancer's epoch. With the real
// clock it is time.Since, which reads only the monotonic clock: half the
// cost of time.Now, which reads the wall clock too.
func (b *Balancer) now() int64 {
	if b.real {
		return int64(time.Since(b.epoch))
	}
	return int64(b.clock.Now().Sub(b.epoch))
}

// Update replaces the endpoints. An endpoint whose Addr stays keeps its
// estimate, requests in flight, failure count and ejection (its Terminating
// flag follows the target); new ones start fresh; gone ones are dropped (a
// request in flight on one may still call Done, which then only ends it).
// A repeated Addr counts once, ready if any of its entries is.
func (b *Balancer) Update(targets []Target) {
	b.updateMu.Lock()
	defer b.updateMu.Unlock()
	old := b.set.Load()
	now := b.now()
	next := &endpointSet{eps: make([]*Endpoint, 0, len(targets)), byAddr: make(map[string]*Endpoint, len(targets))}
	terminating := make([]bool, 0, len(targets))
	for _, t := range targets {
		if e, dup := next.byAddr[t.Addr]; dup {
			for i, x := range next.eps {
				if x == e {
					terminating[i] = terminating[i] && t.Terminating
				}
			}
			continue
		}
		e := old.byAddr[t.Addr]
		if e == nil {
			e = b.newEndpoint(t.Addr, now)
		}
		next.byAddr[t.Addr] = e
		next.eps = append(next.eps, e)
		terminating = append(terminating, t.Terminating)
	}
	for i, e := range next.eps {
		e.terminating.Store(terminating[i])
	}
	for addr, e := range old.byAddr {
		if next.byAddr[addr] != e {
			e.removed.Store(true)
		}
	}
	b.set.Store(next)
}

// Len is the number of endpoints, ejected and terminating ones included.
func (b *Balancer) Len() int { return len(b.set.Load().eps) }

// Pick chooses an endpoint for one try. avoid (may be nil) is the endpoint
// of the previous try of the same request: a retry gets another endpoint
// when one of the same eligibility exists (like Envoy's previous_hosts
// predicate), else avoid again. Pick returns nil when there are no
// endpoints.
func (b *Balancer) Pick(avoid *Endpoint) *Endpoint {
	eps := b.set.Load().eps
	n := len(eps)
	switch n {
	case 0:
		return nil
	case 1:
		return eps[0]
	}
	now := b.now()
	// Fast path: draw two distinct ready, non-ejected endpoints by
	// rejection sampling, which is exact (given success, the pair is
	// uniform over the eligible ones) and O(1) when most are eligible.
	// When it gives up, the scan below draws afresh, uniformly too.
	var x *Endpoint
	for range 4 {
		if e := eps[b.intn(n)]; e != avoid && e.class(now) == ready {
			x = e
			break
		}
	}
	if x != nil {
		for range 4 {
			if e := eps[b.intn(n)]; e != x && e != avoid && e.class(now) == ready {
				return cheaper(x, e, now)
			}
		}
	}
	return b.pickScan(eps, avoid, now)
}

// Endpoint classes, in order of preference.
const (
	ready       = 0 // ready, not ejected
	terminating = 1 // terminating, not ejected
	ejected     = 2 // ejected: only in panic mode
)

// pickScan is Pick by counting: the best class present, then two distinct
// uniformly drawn ranks within it (avoid excluded unless it is alone).
func (b *Balancer) pickScan(eps []*Endpoint, avoid *Endpoint, now int64) *Endpoint {
	var count [3]int
	avoidClass := -1
	for _, e := range eps {
		c := e.class(now)
		if e == avoid {
			avoidClass = c
			continue
		}
		count[c]++
	}
	tier := 0
	for tier < ejected && count[tier] == 0 && avoidClass != tier {
		tier++
	}
	m := count[tier]
	switch m {
	case 0:
		if avoidClass == tier {
			return avoid
		}
		return eps[0] // unreachable with len(eps) ≥ 2
	case 1:
		if e := nth(eps, avoid, tier, 0, now); e != nil {
			return e
		}
		return eps[0] // an endpoint changed class between the scans
	}
	i := b.intn(m)
	j := b.intn(m - 1)
	if j >= i {
		j++
	}
	x, y := nth(eps, avoid, tier, i, now), nth(eps, avoid, tier, j, now)
	switch {
	case x == nil && y == nil:
		return eps[0]
	case x == nil:
		return y
	case y == nil:
		return x
	}
	return cheaper(x, y, now)
}

// nth is the k-th endpoint of class c (avoid skipped), nil if there is none.
func nth(eps []*Endpoint, avoid *Endpoint, c, k int, now int64) *Endpoint {
	for _, e := range eps {
		if e == avoid || e.class(now) != c {
			continue
		}
		if k == 0 {
			return e
		}
		k--
	}
	return nil
}

// cheaper is P2C's duel: the lower cost wins, x on a tie (x and y come in
// random order, so ties are broken at random).
func cheaper(x, y *Endpoint, now int64) *Endpoint {
	if y.cost(now) < x.cost(now) {
		return y
	}
	return x
}

// Endpoint is one address of the destination, with its load and health.
type Endpoint struct {
	b    *Balancer
	addr string

	inFlight     atomic.Int64
	ewma         atomic.Uint64 // float64 bits: the estimate in ns as of last
	last         atomic.Int64  // time of the last sample (ns since epoch)
	ejectedUntil atomic.Int64  // end of the latest ejection (ns since epoch); 0: never ejected
	terminating  atomic.Bool
	removed      atomic.Bool // dropped by Update

	mu        sync.Mutex // orders samples and the failure/ejection state below
	fails     int        // consecutive failed tries
	ejections int        // ejection count as of the latest ejection
}

func (b *Balancer) newEndpoint(addr string, now int64) *Endpoint {
	e := &Endpoint{b: b, addr: addr}
	e.ewma.Store(math.Float64bits(float64(DefaultRTT)))
	e.last.Store(now)
	return e
}

// Addr is the endpoint's address.
func (e *Endpoint) Addr() string { return e.addr }

func (e *Endpoint) class(now int64) int {
	switch {
	case e.ejectedUntil.Load() > now:
		return ejected
	case e.terminating.Load():
		return terminating
	}
	return ready
}

// estimate is the latency estimate (ns) at now: the EWMA decayed toward
// zero for the time no sample has refreshed it.
func (e *Endpoint) estimate(now int64) float64 {
	v := math.Float64frombits(e.ewma.Load())
	if dt := now - e.last.Load(); dt > 0 {
		v *= decay(float64(dt) / float64(DecayTime))
	}
	return v
}

// decay is exp(-x) for x ≥ 0. A busy endpoint's samples are far less than
// τ apart, and below x = 1e-3 the first-order 1 - x is exact to 5e-7, at
// a fraction of math.Exp's cost on the hot path.
func decay(x float64) float64 {
	if x < 1e-3 {
		return 1 - x
	}
	return math.Exp(-x)
}

// cost is Linkerd's: estimate × (requests in flight + 1).
func (e *Endpoint) cost(now int64) float64 {
	return e.estimate(now) * float64(e.inFlight.Load()+1)
}

// peakEWMA is the next estimate after a sample of rtt, dt after the last
// one: a higher sample replaces the estimate, a lower one is blended in
// with weight 1 - exp(-dt/τ).
func peakEWMA(prev float64, dt int64, rtt float64) float64 {
	if rtt > prev {
		return rtt
	}
	w := decay(float64(max(dt, 0)) / float64(DecayTime))
	return prev*w + rtt*(1-w)
}

// failedSample is what a failed try of latency rtt counts as, given the
// estimate prev; see FailurePenalty.
func failedSample(prev, rtt float64) float64 {
	penalty := min(max(FailurePenalty*prev, float64(DefaultRTT)), float64(MaxFailurePenalty))
	return max(rtt, penalty, prev)
}

// Start counts a request in flight on e and returns its start time, for
// Done.
func (e *Endpoint) Start() int64 {
	e.inFlight.Add(1)
	return e.b.now()
}

// Done ends a try begun with Start: its latency is from start, failed says
// whether the try failed as the policy's failOn counts failures. Done
// returns true when this failure ejected the endpoint. Failures of tries
// that end while the endpoint is ejected do not count toward another
// ejection; a dropped endpoint is never ejected.
func (e *Endpoint) Done(start int64, failed bool) (ejected bool) {
	b := e.b
	now := b.now()
	e.inFlight.Add(-1)
	rtt := float64(max(now-start, 0))

	e.mu.Lock()
	prev := math.Float64frombits(e.ewma.Load())
	if failed {
		rtt = failedSample(prev, rtt)
	}
	last := e.last.Load()
	e.ewma.Store(math.Float64bits(peakEWMA(prev, now-last, rtt)))
	e.last.Store(max(now, last))
	switch {
	case !failed:
		e.fails = 0
	case e.ejectedUntil.Load() <= now: // not ejected: count it
		e.fails++
		if cfg := b.cfg.Load(); cfg.ConsecutiveFailures > 0 && e.fails >= cfg.ConsecutiveFailures && !e.removed.Load() {
			ejected = b.eject(e, cfg, now)
		}
	}
	e.mu.Unlock()

	if ejected && b.OnEject != nil {
		b.OnEject(e.addr)
	}
	return ejected
}

// eject ejects e (whose mu is held) unless MaxEjectionPercent forbids it;
// e then keeps its failure count, so its next failure tries again.
func (b *Balancer) eject(e *Endpoint, cfg *Config, now int64) bool {
	b.ejectMu.Lock()
	defer b.ejectMu.Unlock()
	eps := b.set.Load().eps
	out := 0
	for _, o := range eps {
		if o.ejectedUntil.Load() > now {
			out++
		}
	}
	if out+1 > max(1, len(eps)*cfg.MaxEjectionPercent/100) {
		return false
	}
	base, maxT := cfg.BaseEjectionTime, cfg.MaxEjectionTime
	// The count stops growing once the ejection is at its longest, so
	// that it also comes back down in bounded time.
	n := min(e.ejectionsAt(now, base)+1, int((maxT+base-1)/base))
	e.ejections = n
	e.fails = 0
	e.ejectedUntil.Store(now + int64(min(time.Duration(n)*base, maxT)))
	return true
}

// ejectionsAt is the ejection count at now: the count of the latest
// ejection, less one for each full base the endpoint has spent back since
// it ended. e.mu is held.
func (e *Endpoint) ejectionsAt(now int64, base time.Duration) int {
	until := e.ejectedUntil.Load()
	if e.ejections == 0 || now < until {
		return e.ejections
	}
	return max(0, e.ejections-int((now-until)/int64(base)))
}

// EndpointStatus is one endpoint's state, for /debug/endpoints.
type EndpointStatus struct {
	Addr        string `json:"address"`
	Terminating bool   `json:"terminating,omitempty"`
	// EWMA is the latency estimate that Pick uses now (decayed for the
	// time since the last sample); in JSON "ewmaMs", float milliseconds.
	EWMA                time.Duration `json:"-"`
	InFlight            int           `json:"inFlight"`
	ConsecutiveFailures int           `json:"consecutiveFailures"`
	// Ejections is the ejection count now: the next ejection lasts
	// (Ejections+1) × base, at most the maximum.
	Ejections    int        `json:"ejections"`
	EjectedUntil *time.Time `json:"ejectedUntil,omitempty"` // set while ejected
}

type statusJSON EndpointStatus

type statusWire struct {
	statusJSON
	EWMAMs float64 `json:"ewmaMs"`
}

// MarshalJSON writes EWMA as "ewmaMs", float milliseconds.
func (s EndpointStatus) MarshalJSON() ([]byte, error) {
	return json.Marshal(statusWire{statusJSON(s), float64(s.EWMA) / float64(time.Millisecond)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (s *EndpointStatus) UnmarshalJSON(data []byte) error {
	var w statusWire
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	*s = EndpointStatus(w.statusJSON)
	s.EWMA = time.Duration(math.Round(w.EWMAMs * float64(time.Millisecond)))
	return nil
}

// Status is every endpoint's state, in Update's order.
func (b *Balancer) Status() []EndpointStatus {
	eps := b.set.Load().eps
	now := b.now()
	base := b.cfg.Load().BaseEjectionTime
	out := make([]EndpointStatus, 0, len(eps))
	for _, e := range eps {
		e.mu.Lock()
		fails, ejections := e.fails, e.ejectionsAt(now, base)
		e.mu.Unlock()
		s := EndpointStatus{
			Addr:                e.addr,
			Terminating:         e.terminating.Load(),
			EWMA:                time.Duration(e.estimate(now)),
			InFlight:            int(e.inFlight.Load()),
			ConsecutiveFailures: fails,
			Ejections:           ejections,
		}
		if until := e.ejectedUntil.Load(); until > now {
			t := b.epoch.Add(time.Duration(until)).Round(0)
			s.EjectedUntil = &t
		}
		out = append(out, s)
	}
	return out
}

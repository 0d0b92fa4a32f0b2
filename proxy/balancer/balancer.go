// Package balancer spreads one destination's requests over its endpoints,
// the way Linkerd balances and Envoy ejects.
//
// Choice: power of two choices (P2C) over a latency estimate weighted by
// the requests in flight, as Linkerd's balancer (tower's PeakEwma, itself
// from Finagle). Two distinct endpoints are drawn at random among the
// eligible ones and they duel on cost, max(estimate, [MinEstimate]) ×
// (in flight + 1), the slower one's estimate divided by [Tolerance]. P2C
// needs no global ordering, so a pick reads two endpoints' atomics and
// nothing shared by all of them; and it avoids the herd that "always the
// least loaded" causes when many sidecars see the same numbers.
//
// Why not Linkerd's numbers as they are. A first version had tower's peak
// EWMA (a sample above the estimate replaces it at once, one below is
// blended in with τ = 10 s), a 30 ms prior for new endpoints, a strict
// "lower cost wins" duel and a failed try counted as 10× the estimate.
// Measured with real servers on loopback (proxy/outbound's
// integration_balance_test.go), one keep-alive client sending 4,000
// sequential requests to four equal pods spread them [1366 1051 336 1247]
// and [1089 339 1882 690]: at sub-millisecond latencies the estimate is
// noise (the first try's TCP connect, a GC pause, the scheduler of a busy
// 2-core node), one slow sample replaced it at once and took tens of
// seconds to decay, and with nothing ever in flight the strict duel
// ordered the pods by that noise (the cheapest got about half of the
// requests, the costliest none). And a pod failing every try was not
// ejected in 5,000 requests: the penalty starved it of the tries that
// ejection counts. New pods, starting at 30 ms against ~1 ms peers, got
// almost nothing for ~30 s, where scaling up must move load within a
// second. Hence, in this package:
//
//   - No prior: an endpoint's estimate is unknown until its first
//     successful try, and a duel treats an unknown estimate as equal to
//     the other candidate's (two unknown ones as equal), but no less than
//     the bound its abandoned tries set (below). A new pod gets a fair
//     share at once.
//   - The estimate is an EWMA weighted by time: a sample is blended in
//     with weight 1 - exp(-Δt/[DecayTime]) (5 s), Δt since the endpoint's
//     previous sample, above the estimate or below it: it tracks the mean.
//     A sample is dated by its try's start,
//     so that its own latency does not lengthen its Δt: dated by its end,
//     one 500 ms stall of a sequential client's try weighed 1 - e^-0.5
//     ≈ 40 % and put ~200 ms on a 0.1 ms pod's estimate; dated by its
//     start it weighs the few ms since the previous try began. A single
//     spike moves the estimate by about spike × Δt/5 s, little at any
//     real rate, and one sample never raises it past [MaxRise] × itself
//     (an idle gap makes a sample weigh nearly all); a pod that turns
//     50 ms slower is at 10 ms within a second (its
//     samples then come at least 50 ms apart). During warm-up, the first
//     [WarmupSamples] samples, the estimate is their median: a slow first
//     try (the connect) or a stall of the node during the first tries
//     leaves no trace. (With their mean instead, a 2 s stall of the node,
//     seen at a load average of 18 on 2 cores, left ~200 ms on a 0.1 ms
//     pod, which took DecayTime·ln(200) ≈ 50 s to fade and cost it its
//     share meanwhile.)
//   - [MinEstimate] (1 ms) is a floor in the cost: below it differences
//     are scheduling noise on a node, not a slower pod. /debug/endpoints
//     still shows the real estimate.
//   - Estimates within [Tolerance] (2×) of each other duel as equal;
//     beyond it the slower one's counts divided by 2. Identical pods'
//     estimates drift apart on a busy node, above the floor too.
//   - The duel is weighted: x wins against y with probability
//     cost(y) / (cost(x) + cost(y)), not whenever it is cheaper. Equal
//     pods split evenly whatever the noise; a pod 50× slower (25× after
//     Tolerance) wins ~4 % of its duels (~2 % of the requests among
//     four); requests in flight still pull toward idle pods.
//   - A try's latency is from its start to its answer, the response's
//     headers (Answered), as tower's PeakEwma completes on the response;
//     one that ends without an answer (a connect failure, a timeout or a
//     reset before the headers) counts to its end. A stream, a download
//     or a long poll stays in flight to its end, but its life is how long
//     its client reads, not how fast the pod answers. (Counted to their
//     end, 500 ms long polls put their pod at 300-490 ms against its
//     peers' few ms, each poll doubling the estimate (MaxRise) where no
//     other try's sample came between, and it got 2-19 of 800 unary
//     calls: proxy/outbound's TestBalanceStreamIsNotLatency.)
//   - An estimate that no sample has refreshed decays toward zero as it
//     ages, with DecayTime (as in tower and Finagle), so a pod shunned for
//     being slow is tried more as time passes and can show that it
//     recovered; it matters only for a pod that gets no tries at all.
//
// Failures: a failed try never lowers the estimate, since an error answered
// in 1 ms would otherwise make a broken pod look fastest. Its sample is
// max(latency, estimate), through the same EWMA (a slow failure, a
// timeout, still counts its slowness), and on an unknown estimate it
// leaves the estimate unknown: a pod broken from its start fails fast
// (connection refused or reset, a 503 answered at once), such a sample
// would make it look fastest of all with no success ever to correct it,
// and ejection, not the estimate, is what takes it out. Nor may a fast
// failure win by the requests in flight: a pod that fails at once frees
// its slots at once, so in a duel the requests in flight of an endpoint
// whose last try failed count as at least the other candidate's (in
// simulation, a pod failing in 100 µs among 1 ms peers with ~10 requests
// in flight otherwise took 34 % of four pods' requests, 68 % of two).
// None of this is a penalty: a failing pod keeps its fair share (no more,
// so no black hole when ejection is off), which with ejection on makes it
// reach ConsecutiveFailures within a few of its tries and go out promptly;
// and back from an ejection it gets its share at once, so that a pod still
// failing is ejected again, for longer.
//
// Abandoned tries (the client gave up: its deadline, a cancel) count for
// neither breaker nor ejection, so the estimate is the only place a pod
// that accepts calls and never answers shows. The time such a try waited
// is a lower bound of the pod's latency: on a known estimate it is a
// sample as a failure's is; on an unknown one it sets a bound that the
// duel counts the unknown estimate as at least (the other candidate's,
// but no less than the bound). The estimate stays unknown, so the first
// successful try starts the warm-up as before and a bound never enters the
// median. The bound rises at most MaxRise × max(bound, MinEstimate) per
// abandoned try, so that one stall of the node that expires a client's
// deadline counts as 2 ms, not as the stall, and decays as an estimate
// does. (Without it, a pod hung from its start kept its fair share among
// three healthy ones: 8-10 % of calls with a 200 ms deadline failed, and
// kept failing.) A bound can only make a pod look slower than an unknown
// estimate did; a fast abandon, unlike a known 1 ms estimate, never makes
// it look faster than pods at 50 ms.
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
// rollout's last old pods still serve); if fewer than half of the
// endpoints are not ejected, all of them, ejected ones included ("panic
// mode", as Envoy's healthy_panic_threshold at its default 50 %:
// availability beats ejection, and a whole service failing is the
// destination's circuit breaker's business, not the balancer's). Every
// endpoint ejected is its extreme case. Panic at zero only was not
// enough: with MaxEjectionPercent 100, 9 of 10 pods ejected sent every
// request to the tenth, 10× its load, until it failed too. With
// MaxEjectionPercent at most 50 ejections alone never reach it (at most
// half are out, or the one of two); an Update that drops endpoints can.
//
// The hot path (Pick, Start, Answered, Done) does not allocate and takes
// no lock that all endpoints share: the endpoint list is an immutable
// slice behind an atomic pointer, each endpoint's numbers are atomics,
// Answered takes none and Done only its endpoint's mutex, and random
// numbers come from math/rand/v2's lock-free top-level functions. The one
// exception is the rare failure that reaches ConsecutiveFailures:
// deciding an ejection against MaxEjectionPercent takes a balancer-wide
// mutex, so two endpoints cannot both take the last free ejection slot.
package balancer

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// MaxRise bounds one sample's step upward: the estimate rises to at
	// most MaxRise × max(estimate, MinEstimate) per sample. That binds
	// only where a sample weighs much, after an idle gap: a pod that turns
	// 50 ms slower there is at it in about six samples (1, 2, 4, ... ms),
	// its share falling once it is past 2× its peers', and a stall of the
	// node counts as 2 ms, not 200. At a steady rate a sample's weight is
	// small and the rise is as without it. (Measured in
	// the cluster at load 6-12 without it: estimates of identical pods
	// 1-11 ms apart for seconds, shares of 5,000 calls 12.6-38.8 %.)
	MaxRise = 2
	// DecayTime is the EWMA's time constant τ, for samples above and
	// below the estimate alike, and that of an idle endpoint's estimate
	// decaying toward zero. Symmetric, the EWMA tracks a pod's mean
	// latency. (With a rise ten times faster than the fall, τ 1 s up and
	// 10 s down, it tracked a high percentile instead, about the 90th:
	// gRPC pods answering in 0.6 ms at the median sat at 1.3-1.9 ms,
	// above the cost floor and as noisy as a tail is, and the spread of
	// 5,000 calls over four identical pods in the cluster was 16.5-29 %.)
	// A pod that turns 50 ms slower is at 10 ms after a second and near
	// 50 within 5-10 s, its share falling once it is past 2× its peers'.
	DecayTime = 5 * time.Second
	// WarmupSamples is how many first samples the estimate is the median
	// of, before the time-weighted EWMA takes over from that median.
	WarmupSamples = 10
	// MinEstimate is the least estimate the cost counts: below a
	// millisecond, differences are scheduling noise on a node (a GC pause,
	// a busy core), not a slower pod.
	MinEstimate = time.Millisecond
	// Tolerance is how many times slower than another a pod may be and
	// still weigh the same in a duel; the slower one's estimate counts
	// divided by it (never below the faster one's). On a busy 2-core node
	// identical pods' estimates sat up to 1.45× apart for seconds above
	// the floor (gRPC at 1.0-1.5 ms while other tests ran), enough for a
	// weighted duel to give one of four pods 21 % of 5,000 calls and
	// another 30 %; a pod really slower (a 50 ms pod among 1 ms ones counts
	// 25×) still loses its duels. Envoy's least-request balancer ignores
	// latency altogether; Linkerd's follows every difference.
	Tolerance = 2
	// ServingWindow is how recent another endpoint's success must be for
	// a failure to be one endpoint's own, not the destination's (Done):
	// a pod that has not answered for longer, or one whose tries all end
	// unjudged (a hung pod whose callers give up), is no evidence that
	// the destination serves.
	ServingWindow = 10 * time.Second
	// ArrivalGrace is how long a new endpoint counts as serving before
	// any try of it ended, so that one pod failing fast among peers whose
	// first answers are on their way is that pod's; short, since a pod
	// hung from its start must not keep a destination failing as a whole
	// from counting its failures for long.
	ArrivalGrace = time.Second

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
	float func() float64  // rand.Float64, for duels; tests set a seeded one

	// panicUntil bounds panic mode: it may be in force only before this
	// time (ns since epoch; 0: not at all), so Pick's fast path, which
	// draws ready endpoints only, needs one atomic load, not a count of
	// the ejected ones. Only eject and Update change what is ejected
	// (ejections end by time), and both set it under ejectMu.
	panicUntil atomic.Int64

	updateMu sync.Mutex // serialises Update
	ejectMu  sync.Mutex // serialises ejection decisions (MaxEjectionPercent) and panicUntil
}

type endpointSet struct {
	eps    []*Endpoint
	byAddr map[string]*Endpoint
	// families are the address families of eps (famV4, famV6), set by
	// Update: a caller's own choice of an address of another family is
	// none the endpoints stand for (Endpoint).
	families uint8
}

const (
	famV4 uint8 = 1 << iota
	famV6
)

// family is the address family of an endpoint's address; an address that
// is no IP (a name) may be either, and counts as both.
func family(addr string) uint8 {
	ap, err := netip.ParseAddrPort(addr)
	switch {
	case err != nil:
		return famV4 | famV6
	case ap.Addr().Unmap().Is4():
		return famV4
	default:
		return famV6
	}
}

// New returns a balancer without endpoints; clock nil is the real clock.
func New(cfg Config, clock Clock) *Balancer {
	_, isReal := clock.(realClock)
	if clock == nil {
		clock, isReal = realClock{}, true
	}
	b := &Balancer{clock: clock, real: isReal, epoch: clock.Now(), intn: rand.IntN, float: rand.Float64}
	b.set.Store(&endpointSet{}) // before SetConfig, which reads it
	b.SetConfig(cfg)
	return b
}

// SetConfig replaces the ejection policy; it applies from the next
// failure. Current ejections keep their end, with two exceptions, as
// Envoy rebuilds its outlier detector when the cluster changes: with
// ConsecutiveFailures 0 every ejection ends now (an operator turns
// ejection off when it took out healthy pods, and wants them back at
// once, not in up to MaxEjectionTime), and an ejection that would end
// after now + the new MaxEjectionTime ends then. Ejection counts stay.
func (b *Balancer) SetConfig(cfg Config) {
	c := cfg.normalized()
	if old := b.cfg.Load(); old != nil && *old == c {
		return // a reload that left the policy as it was: nothing to cut
	}
	// Stored first: a Done that takes an endpoint's mu after the loop
	// below has released it ejects by the new policy, never the old.
	b.cfg.Store(&c)
	now := b.now()
	limit := now + int64(c.MaxEjectionTime)
	if c.ConsecutiveFailures == 0 {
		limit = now
	}
	cut := false
	for _, e := range b.set.Load().eps {
		// Under e.mu, as eject writes it; only ever lowered, so the
		// panicUntil in force stays a valid bound meanwhile.
		e.mu.Lock()
		if e.ejectedUntil.Load() > limit {
			e.ejectedUntil.Store(limit)
			cut = true
		}
		e.mu.Unlock()
	}
	if !cut {
		return
	}
	// Fewer ejections may end panic mode: recompute its bound under
	// ejectMu, as eject and Update do, from the endpoints as they are now
	// (an Update or an ejection since the loop included).
	b.ejectMu.Lock()
	b.panicUntil.Store(panicEnd(b.set.Load().eps, b.now()))
	b.ejectMu.Unlock()
}

// Config is the ejection policy in force, normalized.
func (b *Balancer) Config() Config { return *b.cfg.Load() }

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
		next.families |= family(t.Addr)
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
	// Dropping endpoints can put the ejected ones in the majority, adding
	// some can end it: panicUntil follows the new set, stored in the order
	// that never shows Pick the new set with a bound too early.
	b.ejectMu.Lock()
	until := panicEnd(next.eps, now)
	if until > 0 {
		b.panicUntil.Store(until)
		b.set.Store(next)
	} else {
		b.set.Store(next)
		b.panicUntil.Store(until)
	}
	b.ejectMu.Unlock()
}

// Len is the number of endpoints, ejected and terminating ones included.
func (b *Balancer) Len() int { return len(b.set.Load().eps) }

// Endpoint is the endpoint at addr (as its Target spelled it), ejected
// and terminating ones included, or nil: for a caller that must reach
// that endpoint and no other. ip is addr's address: when no endpoint is
// at addr, otherFamily says whether none is of ip's family either (a
// dual-stack pod reached by the address of a family the endpoints were
// not sent in: no endpoint stands for it). One atomic load and one map
// read.
func (b *Balancer) Endpoint(addr string, ip netip.Addr) (ep *Endpoint, otherFamily bool) {
	set := b.set.Load()
	if ep := set.byAddr[addr]; ep != nil {
		return ep, false
	}
	f := famV6
	if ip.Unmap().Is4() {
		f = famV4
	}
	return nil, set.families&f == 0
}

// Pick chooses an endpoint for one try. avoid are the endpoints of the
// same request's earlier tries, the latest last (Tried keeps them so, nil
// or none for a first try): a retry goes to an endpoint it has not tried
// where one of the same eligibility exists, as Envoy's previous_hosts
// predicate rejects every host already attempted (avoiding only the
// previous one, a third try among three endpoints went back to the first,
// failed one half the time). When every endpoint of the best eligibility
// was tried, it avoids only the latest try's, as before: the last of them
// is picked again only when it is alone. Pick returns nil when there are
// no endpoints.
func (b *Balancer) Pick(avoid ...*Endpoint) *Endpoint {
	eps := b.set.Load().eps
	n := len(eps)
	switch n {
	case 0:
		return nil
	case 1:
		return eps[0]
	}
	now := b.now()
	if now < b.panicUntil.Load() {
		// Panic mode may be in force: the scan knows.
		return b.pickScan(eps, avoid, now)
	}
	// Fast path: draw two distinct ready, non-ejected endpoints by
	// rejection sampling, which is exact (given success, the pair is
	// uniform over the eligible ones) and O(1) when most are eligible.
	// When it gives up, the scan below draws afresh, uniformly too.
	var x *Endpoint
	for range 4 {
		if e := eps[b.intn(n)]; !tried(avoid, e) && e.class(now) == ready {
			x = e
			break
		}
	}
	if x != nil {
		for range 4 {
			if e := eps[b.intn(n)]; e != x && !tried(avoid, e) && e.class(now) == ready {
				return b.duel(x, e, now)
			}
		}
	}
	return b.pickScan(eps, avoid, now)
}

// tried reports whether e is one of avoid: a loop, not slices.Contains,
// so that it inlines into Pick's draws (a first try's avoid is empty).
func tried(avoid []*Endpoint, e *Endpoint) bool {
	for _, a := range avoid {
		if a == e {
			return true
		}
	}
	return false
}

// MaxTried is how many endpoints a Tried remembers: one per retry of
// policy.MaxAttempts and one for each of the two free tries the
// sidecar's outbound adds (a request never sent, a refused dial; a
// request's last try has none after it to avoid its endpoint).
const MaxTried = 12

// Tried is the endpoints of one request's tries, for Pick to avoid,
// each once, the latest last. Its zero value is a first try's: none. It
// is a fixed array, kept in the request's state: a retry's Pick
// allocates nothing.
type Tried struct {
	eps [MaxTried]*Endpoint
	n   int
}

// Add records e as the latest try's endpoint: one tried before moves to
// the end. Past MaxTried endpoints the oldest is forgotten.
func (t *Tried) Add(e *Endpoint) {
	l := t.eps[:t.n]
	i := -1
	for j, x := range l {
		if x == e {
			i = j
			break
		}
	}
	if i < 0 {
		if t.n == MaxTried {
			i = 0 // full: the oldest goes
		} else {
			t.n++
			l = t.eps[:t.n]
			i = t.n - 1
		}
	}
	copy(l[i:], l[i+1:])
	l[len(l)-1] = e
}

// Endpoints are the endpoints tried, the latest last: Pick's avoid.
func (t *Tried) Endpoints() []*Endpoint { return t.eps[:t.n] }

// Endpoint classes, in order of preference, and the tier of panic mode.
const (
	ready       = 0 // ready, not ejected
	terminating = 1 // terminating, not ejected
	ejected     = 2 // ejected: only in panic mode
	anyClass    = 3 // panic mode's tier: every endpoint, whatever its class
)

// inPanic reports whether panic mode is in force: fewer than half of the
// n endpoints are not ejected (Envoy's default healthy_panic_threshold,
// 50 %; there outlier-ejected hosts are not healthy).
func inPanic(n, out int) bool { return 2*(n-out) < n }

// panicEnd is when panic mode ends at the latest for eps as they are at
// now: the end of their latest ejection if it is in force, 0 if not. With
// no ejection or Update, ejections only end, so it cannot start later.
func panicEnd(eps []*Endpoint, now int64) int64 {
	if out, last := ejectedIn(eps, now); inPanic(len(eps), out) {
		return last
	}
	return 0
}

// ejectedIn is how many of eps are ejected at now, and when the latest of
// those ejections ends.
func ejectedIn(eps []*Endpoint, now int64) (out int, last int64) {
	for _, e := range eps {
		if until := e.ejectedUntil.Load(); until > now {
			out++
			last = max(last, until)
		}
	}
	return out, last
}

// pickScan is Pick by counting: the best class present (every endpoint in
// panic mode), then two distinct uniformly drawn ranks within it, those
// in avoid excluded. When avoid holds every endpoint of that class, it
// scans again avoiding only the latest, which is picked only if it is
// alone.
func (b *Balancer) pickScan(eps, avoid []*Endpoint, now int64) *Endpoint {
	var count, avoided [4]int
	for _, e := range eps {
		c := e.class(now)
		if tried(avoid, e) {
			avoided[c]++
			avoided[anyClass]++
			continue
		}
		count[c]++
		count[anyClass]++
	}
	tier := 0
	if inPanic(len(eps), count[ejected]+avoided[ejected]) {
		tier = anyClass
	}
	for tier < terminating && count[tier]+avoided[tier] == 0 {
		tier++
	}
	m := count[tier]
	switch m {
	case 0:
		if len(avoid) > 1 {
			return b.pickScan(eps, avoid[len(avoid)-1:], now)
		}
		if avoided[tier] > 0 {
			return avoid[0]
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
	return b.duel(x, y, now)
}

// nth is the k-th endpoint of class c, any class for anyClass (those in
// avoid skipped), nil if there is none.
func nth(eps, avoid []*Endpoint, c, k int, now int64) *Endpoint {
	for _, e := range eps {
		if tried(avoid, e) || c != anyClass && e.class(now) != c {
			continue
		}
		if k == 0 {
			return e
		}
		k--
	}
	return nil
}

// duel is P2C's choice between x and y: x wins with probability
// cost(y) / (cost(x) + cost(y)), where cost is the estimate as latencies
// weighs it × (in flight + 1) and an unknown estimate counts as the
// other's but at least its bound from abandoned tries (two unknown ones
// as their bounds, at least MinEstimate). The requests in flight of an
// endpoint whose last try failed count as at least the other's: one that
// fails fast frees its slots fast, and would otherwise win by it.
func (b *Balancer) duel(x, y *Endpoint, now int64) *Endpoint {
	ex, ey := x.estimate(now), y.estimate(now)
	switch {
	case ex < 0 && ey < 0:
		ex, ey = bound(ex), bound(ey)
	case ex < 0:
		ex = max(ey, bound(ex))
	case ey < 0:
		ey = max(ex, bound(ey))
	}
	ix, iy := x.inFlight.Load(), y.inFlight.Load()
	switch fx, fy := x.failing(), y.failing(); {
	case fx && !fy:
		ix = max(ix, iy)
	case fy && !fx:
		iy = max(iy, ix)
	}
	ex, ey = latencies(ex, ey)
	cx := ex * float64(ix+1)
	cy := ey * float64(iy+1)
	if b.float()*(cx+cy) < cy {
		return x
	}
	return y
}

// latencies is the latency part of two candidates' costs: each estimate
// at least MinEstimate, and the larger divided by Tolerance, though never
// below the smaller. Pods within Tolerance of each other weigh the same;
// beyond it the ratio grows from 1 as the estimates' ratio does, with no
// jump at the edge.
func latencies(ex, ey float64) (float64, float64) {
	ex, ey = max(ex, float64(MinEstimate)), max(ey, float64(MinEstimate))
	if ex > ey {
		return max(ey, ex/Tolerance), ey
	}
	return ex, max(ex, ey/Tolerance)
}

// Endpoint is one address of the destination, with its load and health.
type Endpoint struct {
	b    *Balancer
	addr string

	inFlight     atomic.Int64
	ewma         atomic.Uint64 // float64 bits: the estimate in ns as of last; before the first successful try negative, unknown - the bound from abandoned tries
	last         atomic.Int64  // date of the latest sample: its try's start (ns since epoch); of a bound, its try's end
	ejectedUntil atomic.Int64  // end of the latest ejection (ns since epoch); 0: never ejected
	terminating  atomic.Bool
	removed      atomic.Bool // dropped by Update
	// health is failedMark while the latest try that ended failed, else
	// the time of the latest success (ns since epoch), or before one a
	// time that makes it serve for ArrivalGrace: one atomic for the
	// duel's question (failing?) and Done's (serving?), swapped once per
	// try.
	health atomic.Int64

	mu        sync.Mutex             // orders samples and the failure/ejection state below
	samples   int                    // samples in the estimate, counted up to WarmupSamples+1
	warm      [WarmupSamples]float64 // the first samples, for their median
	fails     int                    // consecutive failed tries
	ejections int                    // ejection count as of the latest ejection
}

func (b *Balancer) newEndpoint(addr string, now int64) *Endpoint {
	e := &Endpoint{b: b, addr: addr}
	e.ewma.Store(math.Float64bits(unknown))
	e.last.Store(now)
	e.health.Store(now - int64(ServingWindow-ArrivalGrace))
	return e
}

// failedMark is Endpoint.health's value after a failed try.
const failedMark = math.MinInt64

func (e *Endpoint) failing() bool { return e.health.Load() == failedMark }

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

// unknown is the estimate of an endpoint before its first successful try;
// unknown - b is one whose abandoned tries set a lower bound b (ns).
const unknown = -1.0

// bound is the lower bound an unknown estimate v carries (0: none).
func bound(v float64) float64 { return unknown - v }

// estimate is the latency estimate (ns) at now: the EWMA decayed toward
// zero for the time no sample has refreshed it; negative when unknown,
// with its bound decayed alike.
func (e *Endpoint) estimate(now int64) float64 {
	v := math.Float64frombits(e.ewma.Load())
	if v == unknown {
		return unknown
	}
	if dt := now - e.last.Load(); dt > 0 {
		d := decay(float64(dt) / float64(DecayTime))
		if v < 0 {
			return unknown - bound(v)*d
		}
		v *= d
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

// weight is 1 - exp(-x) for x ≥ 0, the weight of a sample Δt = x·τ after
// the previous one: x - x²/2 below 1e-3 (exact to 2e-7 relative).
func weight(x float64) float64 {
	if x < 1e-3 {
		return x - x*x/2
	}
	return -math.Expm1(-x)
}

// ewma is the next estimate after a sample dt after the previous one: a
// higher one is blended in with weight 1 - exp(-dt/RiseTime), a lower one
// with 1 - exp(-dt/DecayTime); on an unknown estimate the sample sets it.
func ewma(prev float64, dt int64, sample float64) float64 {
	if prev < 0 {
		return sample
	}
	next := prev + (sample-prev)*weight(float64(max(dt, 0))/float64(DecayTime))
	// One sample moves the estimate up at most to MaxRise × what the
	// cost counts: after an idle gap a sample weighs nearly all, and one
	// stall of a busy node would otherwise set a pod's estimate to the
	// stall.
	return min(next, max(prev, MaxRise*max(prev, float64(MinEstimate))))
}

// median is the median of xs (at most WarmupSamples of them), without
// allocating: an insertion sort of a copy on the stack.
func median(xs []float64) float64 {
	var buf [WarmupSamples]float64
	s := buf[:len(xs)]
	copy(s, xs)
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Try is one try on an endpoint, from Start to Done or Abandon: when it
// began and, once Answered, when its answer came. It is a value the
// caller keeps in the try's state, so that marking the answer takes no
// lock: the one lock is Done's or Abandon's.
type Try struct {
	start    int64 // ns since the balancer's epoch
	answered int64 // when the answer came (ns since epoch), if ok
	ok       bool  // answered
	pinned   bool  // StartPinned's
}

// Start counts a try in flight on e and returns it, for Answered and Done.
func (e *Endpoint) Start() Try {
	e.inFlight.Add(1)
	return Try{start: e.b.now()}
}

// StartPinned is Start for a try that could go to no other endpoint (a
// request pinned to the pod its app connected to): ejection does not
// take its pod away from it, so its failures are never its endpoint's
// own (Done) but the destination's, each one, for the breaker.
func (e *Endpoint) StartPinned() Try {
	t := e.Start()
	t.pinned = true
	return t
}

// Answered records that t got its answer now: the response's headers. A
// try's latency is from its start to its answer, as Linkerd's (tower's
// PeakEwma completes on the response), not to its end: a stream, a
// download or a long poll lives as long as its client reads, which says
// nothing of how fast the pod answers. The try stays in flight until Done
// or Abandon, which judge its outcome as it ends.
func (e *Endpoint) Answered(t *Try) {
	t.answered, t.ok = e.b.now(), true
}

// end is when t's latency ends: its answer, or without one its end, now.
func (t Try) end(now int64) int64 {
	if t.ok {
		return t.answered
	}
	return now
}

// Done ends a try begun with Start: its latency is to its answer
// (Answered) or, without one, to now; failed says whether the try failed
// as the policy's failOn counts failures. Done returns true when this
// failure ejected the endpoint. Failures of tries that end while the
// endpoint is ejected do not count toward another ejection; a dropped
// endpoint is never ejected.
//
// own says that the failure is the endpoint's own, not the destination's:
// the endpoint's previous try failed too, and another endpoint serves
// (serving). The first failure of a run is never its own: it may be the
// first sign of a destination failing as a whole. The breaker counts an
// own failure in its failure rate only (breaker.ErrOneEndpoint), so that
// one pod's burst, its calls in flight failing at once as it crashes,
// does not open the breaker of the pods that serve (docs/policy.md,
// "Circuit breaker").
func (e *Endpoint) Done(t Try, failed bool) (ejected, own bool) {
	b := e.b
	now := b.now()
	e.inFlight.Add(-1)

	e.mu.Lock()
	e.sample(t.start, t.end(now), failed)
	health := now
	if failed {
		health = failedMark
	}
	wasFailing := e.health.Swap(health) == failedMark
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
	return ejected, failed && wasFailing && !t.pinned && b.serving(e, now)
}

// serving reports whether an endpoint other than e serves: ready, not
// ejected, its latest try that ended a success within ServingWindow (or,
// with none ended yet, its arrival within ArrivalGrace). A terminating
// endpoint takes requests only when no ready one is left, and an ejected
// one none (unless in panic mode, when most of them fail). Only failures
// call it, and it stops at the first endpoint that serves.
func (b *Balancer) serving(e *Endpoint, now int64) bool {
	for _, o := range b.set.Load().eps {
		if h := o.health.Load(); o != e && h != failedMark && now-h < int64(ServingWindow) && o.class(now) == ready {
			return true
		}
	}
	return false
}

// Abandon ends a try begun with Start that neither succeeded nor failed:
// the app went away, or the try was refused before anything reached the
// endpoint (its body, say). As the breaker ignores such an outcome
// (docs/policy.md), so does the endpoint's run of failures: counted as a
// success it ended the run, and a pod failing every try between clients
// that gave up was never ejected. Its latency, to its answer if it had
// one (a stream its client cancelled after 10 minutes was answered in
// milliseconds), else to now, is a lower bound of the try's, so it may
// raise the estimate but never lower it (as a failure's, see the package
// doc): a client that cancels after 1 ms must not make a 50 ms pod look
// fast. On an unknown estimate it raises the estimate's bound instead
// (package doc), so that a pod hung from its start, which no try ever
// makes known, still looks slow.
func (e *Endpoint) Abandon(t Try) {
	now := e.b.now()
	e.inFlight.Add(-1)
	e.mu.Lock()
	if math.Float64frombits(e.ewma.Load()) < 0 {
		e.raiseBound(t.end(now)-t.start, now)
	} else {
		e.sample(t.start, t.end(now), true)
	}
	e.mu.Unlock()
}

// raiseBound raises an unknown estimate's bound toward wait, the time a
// try waited for its answer, at most MaxRise × max(bound, MinEstimate) at
// once (as ewma's rise); e.mu is held. The bound is dated now, the try's
// end, when the pod was last seen not to have answered: dated by the
// start, a 30 s wait would already have decayed to 75 ms.
func (e *Endpoint) raiseBound(wait, now int64) {
	b := bound(e.estimate(now))
	next := min(float64(max(wait, 0)), MaxRise*max(b, float64(MinEstimate)))
	if next <= b {
		return
	}
	e.ewma.Store(math.Float64bits(unknown - next))
	e.last.Store(max(now, e.last.Load()))
}

// Hold counts in flight on e what outlives the try that made it, until
// Release: an opaque connection (a CONNECT tunnel, a redirected TCP
// connection) to e, for as long as it is open. Its try ends with the
// connect (Done), so the estimate learns the connect time, which says how
// the pod answers, and not the connection's life, which says how long its
// client keeps it; while open, it weighs in the duel as a request in
// flight does, so connections spread as with a least-connections
// balancer.
func (e *Endpoint) Hold() { e.inFlight.Add(1) }

// Release ends a Hold.
func (e *Endpoint) Release() { e.inFlight.Add(-1) }

// sample blends the latency of a try from start to end (its answer, or
// its end without one) into the estimate; e.mu is held. A try that did
// not succeed (lowerBound) never lowers the estimate, nor makes it known
// (nor sets a bound: Abandon does, failures do not, see the package doc).
func (e *Endpoint) sample(start, end int64, lowerBound bool) {
	rtt := float64(max(end-start, 0))
	prev := math.Float64frombits(e.ewma.Load())
	if lowerBound && prev < 0 {
		return
	}
	if lowerBound {
		rtt = max(rtt, prev)
	}
	if e.samples < WarmupSamples+1 {
		e.samples++
	}
	// A sample is dated by its try's start: its weight is the time
	// from the previous sample's start to its own, which its own
	// latency does not lengthen (see Δt in the package doc).
	last := e.last.Load()
	next := ewma(prev, start-last, rtt)
	if e.samples <= WarmupSamples {
		e.warm[e.samples-1] = rtt
		next = median(e.warm[:e.samples])
	}
	e.ewma.Store(math.Float64bits(next))
	e.last.Store(max(start, last))
}

// eject ejects e (whose mu is held) unless MaxEjectionPercent forbids it;
// e then keeps its failure count, so its next failure tries again.
func (b *Balancer) eject(e *Endpoint, cfg *Config, now int64) bool {
	b.ejectMu.Lock()
	defer b.ejectMu.Unlock()
	eps := b.set.Load().eps
	out, last := ejectedIn(eps, now)
	if out+1 > max(1, len(eps)*cfg.MaxEjectionPercent/100) {
		return false
	}
	base, maxT := cfg.BaseEjectionTime, cfg.MaxEjectionTime
	// The count stops growing once the ejection is at its longest, so
	// that it also comes back down in bounded time.
	n := min(e.ejectionsAt(now, base)+1, int((maxT+base-1)/base))
	e.ejections = n
	e.fails = 0
	until := now + int64(min(time.Duration(n)*base, maxT))
	// panicUntil first, so that Pick never sees this ejection with a bound
	// too early.
	if inPanic(len(eps), out+1) {
		b.panicUntil.Store(max(last, until))
	} else {
		b.panicUntil.Store(0)
	}
	e.ejectedUntil.Store(until)
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
	// EWMA is the latency estimate now (decayed for the time since the
	// last sample; Pick counts it as at least MinEstimate); before the
	// endpoint's first successful try the bound its abandoned tries set
	// (decayed alike), 0 if none; in JSON "ewmaMs", float milliseconds.
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

// shown is an estimate as Status shows it: an unknown one as its bound.
func shown(v float64) float64 {
	if v < 0 {
		return bound(v)
	}
	return v
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
			EWMA:                time.Duration(shown(e.estimate(now))),
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

package balancer

import (
	"container/heap"
	"math/rand/v2"
	"testing"
	"time"
)

// testSeed seeds the random source of newTest.
var testSeed uint64 = 1

// fakeClock is a settable clock for single-goroutine tests.
type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func newFake() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

// newTest is a balancer on a fake clock with a seeded random source, so a
// test's run is the same every time.
func newTest(t *testing.T, cfg Config, addrs ...string) (*Balancer, *fakeClock) {
	t.Helper()
	clk := newFake()
	b := New(cfg, clk)
	b.intn = rand.New(rand.NewPCG(testSeed, 2)).IntN
	b.float = rand.New(rand.NewPCG(testSeed, 3)).Float64
	targets := make([]Target, len(addrs))
	for i, a := range addrs {
		targets[i] = Target{Addr: a}
	}
	b.Update(targets)
	return b, clk
}

func (b *Balancer) endpoint(addr string) *Endpoint { return b.set.Load().byAddr[addr] }

// completion is a try in flight in a simulation.
type completion struct {
	at     time.Time
	e      *Endpoint
	start  Try
	failed bool
}

type completions []completion

func (h completions) Len() int           { return len(h) }
func (h completions) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h completions) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *completions) Push(x any)        { *h = append(*h, x.(completion)) }
func (h *completions) Pop() any {
	old := *h
	c := old[len(old)-1]
	*h = old[:len(old)-1]
	return c
}

// sim drives a balancer with a discrete-event simulation: a request arrives
// every interval (sequential: interval after the previous one completed,
// as one client on one connection), picks an endpoint and completes after
// the endpoint's latency, failing if fails says so. Time is the fake
// clock, so a run is deterministic.
type sim struct {
	b          *Balancer
	clk        *fakeClock
	interval   time.Duration
	sequential bool
	latency    func(addr string) time.Duration
	fails      func(addr string) bool

	pending completions
	picks   map[string]int
	// onPick and onDone, if set, see every pick and every end of a try.
	onPick func(e *Endpoint)
	onDone func(e *Endpoint, failed, ejected bool)
}

func newSim(b *Balancer, clk *fakeClock, interval time.Duration, latency func(string) time.Duration, fails func(string) bool) *sim {
	if fails == nil {
		fails = func(string) bool { return false }
	}
	return &sim{b: b, clk: clk, interval: interval, latency: latency, fails: fails, picks: map[string]int{}}
}

// run simulates n arrivals (and the completions due before each).
func (s *sim) run(n int) {
	for range n {
		if s.sequential {
			for len(s.pending) > 0 {
				c := heap.Pop(&s.pending).(completion)
				s.clk.t = c.at
				ej, _ := c.e.Done(c.start, c.failed)
				if s.onDone != nil {
					s.onDone(c.e, c.failed, ej)
				}
			}
		}
		next := s.clk.t.Add(s.interval)
		for len(s.pending) > 0 && !s.pending[0].at.After(next) {
			c := heap.Pop(&s.pending).(completion)
			s.clk.t = c.at
			ej, _ := c.e.Done(c.start, c.failed)
			if s.onDone != nil {
				s.onDone(c.e, c.failed, ej)
			}
		}
		s.clk.t = next
		e := s.b.Pick(nil)
		s.picks[e.Addr()]++
		if s.onPick != nil {
			s.onPick(e)
		}
		start := e.Start()
		heap.Push(&s.pending, completion{at: next.Add(s.latency(e.Addr())), e: e, start: start, failed: s.fails(e.Addr())})
	}
}

// total is the number of requests so far.
func (s *sim) total() int {
	total := 0
	for _, n := range s.picks {
		total += n
	}
	return total
}

// noisy is latency with noise, as a busy node adds it: each sample
// jittered by ±20 %, and 1 in 100 a spike of 5 to 20 ms more (a GC pause,
// the scheduler). The noise is seeded, so a run is the same every time.
func noisy(latency func(string) time.Duration) func(string) time.Duration {
	rng := rand.New(rand.NewPCG(testSeed, 4))
	return func(addr string) time.Duration {
		d := time.Duration(float64(latency(addr)) * (0.8 + 0.4*rng.Float64()))
		if rng.IntN(100) == 0 {
			d += 5*time.Millisecond + time.Duration(rng.Int64N(int64(15*time.Millisecond)))
		}
		return d
	}
}

func (s *sim) share(addr string) float64 {
	return float64(s.picks[addr]) / float64(s.total())
}

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
	start  int64
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
// every interval, picks an endpoint and completes after the endpoint's
// latency, failing if fails says so. Time is the fake clock, so a run is
// deterministic.
type sim struct {
	b        *Balancer
	clk      *fakeClock
	interval time.Duration
	latency  func(addr string) time.Duration
	fails    func(addr string) bool

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
		next := s.clk.t.Add(s.interval)
		for len(s.pending) > 0 && !s.pending[0].at.After(next) {
			c := heap.Pop(&s.pending).(completion)
			s.clk.t = c.at
			ej := c.e.Done(c.start, c.failed)
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

func (s *sim) share(addr string) float64 {
	total := 0
	for _, n := range s.picks {
		total += n
	}
	return float64(s.picks[addr]) / float64(total)
}

package balancer

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

const ms = float64(time.Millisecond)

// try runs one try on e that lasts d.
func try(clk *fakeClock, e *Endpoint, d time.Duration, failed bool) bool {
	start := e.Start()
	clk.Advance(d)
	return e.Done(start, failed)
}

// failN runs n failed tries of 1 ms on e and returns Done's answers.
func failN(clk *fakeClock, e *Endpoint, n int) []bool {
	var out []bool
	for range n {
		out = append(out, try(clk, e, time.Millisecond, true))
	}
	return out
}

func TestPeakEWMA(t *testing.T) {
	w := math.Exp(-1) // dt = τ
	for _, tc := range []struct {
		name         string
		prev, sample float64
		dt           time.Duration
		want         float64
	}{
		{"a higher sample replaces the estimate at once", 30 * ms, 80 * ms, time.Millisecond, 80 * ms},
		{"a higher sample replaces it even after long", 30 * ms, 31 * ms, time.Hour, 31 * ms},
		{"a lower sample right away moves nothing", 30 * ms, 1 * ms, 0, 30 * ms},
		{"a lower sample after τ weighs 1-1/e", 30 * ms, 1 * ms, DecayTime, 30*ms*w + 1*ms*(1-w)},
		{"a lower sample after many τ is nearly all", 30 * ms, 1 * ms, 20 * DecayTime, 1 * ms},
		{"an equal sample keeps it", 5 * ms, 5 * ms, time.Second, 5 * ms},
		{"a clock that went back counts as no time", 30 * ms, 1 * ms, -time.Second, 30 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := peakEWMA(tc.prev, int64(tc.dt), tc.sample)
			if math.Abs(got-tc.want) > 1e-3*ms {
				t.Errorf("peakEWMA(%v, %v, %v) = %v, want %v", tc.prev/ms, tc.dt, tc.sample/ms, got/ms, tc.want/ms)
			}
		})
	}
}

func TestDecay(t *testing.T) {
	for _, x := range []float64{0, 1e-9, 1e-6, 1e-4, 9.99e-4, 1e-3, 0.5, 1, 10, 100} {
		if got, want := decay(x), math.Exp(-x); math.Abs(got-want) > 1e-6*want {
			t.Errorf("decay(%g) = %g, want %g", x, got, want)
		}
	}
}

func TestFailedSample(t *testing.T) {
	for _, tc := range []struct {
		name            string
		prev, rtt, want float64
	}{
		{"a fast failure counts as 10× the estimate", 10 * ms, 1 * ms, 100 * ms},
		{"at least the default RTT", 1 * ms, 0.5 * ms, float64(DefaultRTT)},
		{"at most the cap", 500 * ms, 1 * ms, float64(MaxFailurePenalty)},
		{"a slower failure keeps its latency", 10 * ms, 2000 * ms, 2000 * ms},
		{"never below the estimate", 3000 * ms, 1 * ms, 3000 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := failedSample(tc.prev, tc.rtt); got != tc.want {
				t.Errorf("failedSample(%v ms, %v ms) = %v ms, want %v ms", tc.prev/ms, tc.rtt/ms, got/ms, tc.want/ms)
			}
		})
	}
}

func TestNewEndpointStartsAtDefaultRTT(t *testing.T) {
	b, _ := newTest(t, Config{}, "a")
	if got := b.Status()[0].EWMA; got != DefaultRTT {
		t.Errorf("EWMA of a new endpoint = %v, want %v", got, DefaultRTT)
	}
}

func TestEmpty(t *testing.T) {
	b, _ := newTest(t, Config{})
	if e := b.Pick(nil); e != nil {
		t.Errorf("Pick on no endpoints = %v, want nil", e.Addr())
	}
	if b.Len() != 0 || len(b.Status()) != 0 {
		t.Errorf("Len %d, Status %v: want empty", b.Len(), b.Status())
	}
}

var four = []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "[fd00::4]:80"}

// TestShares is the fairness proof: simulated traffic over four endpoints.
func TestShares(t *testing.T) {
	slow := four[3]
	for _, tc := range []struct {
		name     string
		interval time.Duration // between arrivals; 1 ms answers, so 100 µs keeps ~10 in flight
		latency  func(string) time.Duration
		fails    func(string) bool
		check    func(t *testing.T, s *sim)
	}{
		{
			name: "equal endpoints, concurrent", interval: 100 * time.Microsecond,
			latency: func(string) time.Duration { return time.Millisecond },
			check:   equalShares,
		},
		{
			name: "equal endpoints, one at a time", interval: 2 * time.Millisecond,
			latency: func(string) time.Duration { return time.Millisecond },
			check:   equalShares,
		},
		{
			name: "one endpoint 50 ms slower, concurrent", interval: 100 * time.Microsecond,
			latency: func(a string) time.Duration { return cond(a == slow, 51*time.Millisecond, time.Millisecond) },
			check:   shareBelow(slow, 0.05),
		},
		{
			name: "one endpoint 50 ms slower, one at a time", interval: 2 * time.Millisecond,
			latency: func(a string) time.Duration { return cond(a == slow, 51*time.Millisecond, time.Millisecond) },
			check:   shareBelow(slow, 0.05),
		},
		{
			// Without the failure penalty this endpoint would look 10×
			// faster than the others and take most of the traffic.
			name: "one endpoint failing in 100 µs, never ejected", interval: 100 * time.Microsecond,
			latency: func(a string) time.Duration { return cond(a == slow, 100*time.Microsecond, time.Millisecond) },
			fails:   func(a string) bool { return a == slow },
			check:   shareBelow(slow, 0.05),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newTest(t, Config{}, four...)
			s := newSim(b, clk, tc.interval, tc.latency, tc.fails)
			s.run(200_000)
			for _, a := range four {
				t.Logf("%s: %.2f%%", a, 100*s.share(a))
			}
			tc.check(t, s)
		})
	}
}

func cond[T any](c bool, a, b T) T {
	if c {
		return a
	}
	return b
}

func equalShares(t *testing.T, s *sim) {
	for _, a := range four {
		if sh := s.share(a); math.Abs(sh-0.25) > 0.03 {
			t.Errorf("share of %s = %.2f%%, want 25%% ± 3", a, 100*sh)
		}
	}
}

func shareBelow(addr string, limit float64) func(*testing.T, *sim) {
	return func(t *testing.T, s *sim) {
		if sh := s.share(addr); sh >= limit {
			t.Errorf("share of %s = %.2f%%, want under %.0f%%", addr, 100*sh, 100*limit)
		}
	}
}

// TestFailingEndpointInSimulation: an endpoint that fails every try is
// ejected on exactly its ConsecutiveFailures-th try, gets no traffic while
// ejected, gets traffic again after the base time, and, failing on, is
// ejected again for twice the base.
func TestFailingEndpointInSimulation(t *testing.T) {
	const n = 5
	base := 10 * time.Minute
	b, clk := newTest(t, Config{ConsecutiveFailures: n, BaseEjectionTime: base, MaxEjectionTime: time.Hour, MaxEjectionPercent: 50}, four...)
	bad := b.endpoint(four[0])
	s := newSim(b, clk, 5*time.Millisecond, func(string) time.Duration { return time.Millisecond }, func(a string) bool { return a == bad.addr })

	type ejection struct {
		tries    int // the bad endpoint's tries so far
		at, till time.Time
	}
	var ejections []ejection
	var picksAfter []time.Time // picks of bad after its ejections end
	tries := 0
	s.onDone = func(e *Endpoint, failed, ejected bool) {
		if e != bad {
			if ejected {
				t.Errorf("%s, which never fails, was ejected", e.addr)
			}
			return
		}
		tries++
		if ejected {
			ejections = append(ejections, ejection{tries, clk.t, *b.Status()[0].EjectedUntil})
		}
	}
	s.onPick = func(e *Endpoint) {
		if e != bad {
			return
		}
		if len(ejections) > 0 {
			if last := ejections[len(ejections)-1]; clk.t.Before(last.till) {
				t.Fatalf("the ejected endpoint got a try at %v, ejected until %v", clk.t, last.till)
			}
			picksAfter = append(picksAfter, clk.t)
		}
	}
	for i := 0; len(ejections) < 2 && i < 2000; i++ {
		s.run(1000)
	}
	if len(ejections) < 2 {
		t.Fatalf("ejections %v after %v, want 2", ejections, clk.t.Sub(newFake().t))
	}
	first, second := ejections[0], ejections[1]
	if first.tries != n {
		t.Errorf("first ejection on try %d of the endpoint, want %d", first.tries, n)
	}
	if d := first.till.Sub(first.at); d != base {
		t.Errorf("first ejection lasted %v, want %v", d, base)
	}
	if len(picksAfter) == 0 || picksAfter[0].Before(first.till) {
		t.Errorf("tries after the first ejection: %v, want some from %v on", picksAfter, first.till)
	}
	if second.tries != 2*n {
		t.Errorf("second ejection on try %d of the endpoint, want %d", second.tries, 2*n)
	}
	if d := second.till.Sub(second.at); d != 2*base {
		t.Errorf("second ejection lasted %v, want %v", d, 2*base)
	}
	t.Logf("bad endpoint: %d tries of %d; ejected at %v and %v", tries, s.picks[four[0]]+s.picks[four[1]]+s.picks[four[2]]+s.picks[four[3]], first.at.Sub(newFake().t), second.at.Sub(newFake().t))
}

// TestEjectionTimes walks one endpoint through ejections: n × base, capped,
// and lowered by one for each base spent back without an ejection.
func TestEjectionTimes(t *testing.T) {
	const n = 3
	base, maxT := 10*time.Second, 35*time.Second
	b, clk := newTest(t, Config{ConsecutiveFailures: n, BaseEjectionTime: base, MaxEjectionTime: maxT, MaxEjectionPercent: 100}, "a", "b")
	e := b.endpoint("a")
	for i, step := range []struct {
		back      time.Duration // time spent back (not ejected) before failing again
		want      time.Duration
		wantCount int
	}{
		{0, 10 * time.Second, 1},
		{0, 20 * time.Second, 2},
		{0, 30 * time.Second, 3},
		{0, 35 * time.Second, 4}, // capped
		{0, 35 * time.Second, 4}, // still capped, and the count stops growing
		{10 * time.Second, 35 * time.Second, 4},
		{25 * time.Second, 30 * time.Second, 3}, // 4 - 2 full bases + 1
		{5 * time.Minute, 10 * time.Second, 1},  // recovered: back at the base
	} {
		clk.Advance(step.back)
		got := failN(clk, e, n)
		if want := []bool{false, false, true}; !slices.Equal(got, want) {
			t.Fatalf("step %d: Done returned %v, want %v", i, got, want)
		}
		st := b.Status()[0]
		if st.EjectedUntil == nil {
			t.Fatalf("step %d: not ejected", i)
		}
		if d := st.EjectedUntil.Sub(clk.t); d != step.want || st.Ejections != step.wantCount {
			t.Errorf("step %d: ejected for %v with count %d, want %v with %d", i, d, st.Ejections, step.want, step.wantCount)
		}
		clk.Advance(st.EjectedUntil.Sub(clk.t))
		if b.Status()[0].EjectedUntil != nil {
			t.Fatalf("step %d: still ejected at its end", i)
		}
	}
}

func TestSuccessResetsFailures(t *testing.T) {
	b, clk := newTest(t, Config{ConsecutiveFailures: 3, MaxEjectionPercent: 100}, "a", "b")
	e := b.endpoint("a")
	failN(clk, e, 2)
	try(clk, e, time.Millisecond, false)
	if got := failN(clk, e, 2); slices.Contains(got, true) {
		t.Fatalf("ejected by 2 failures after a success: %v", got)
	}
	if got := b.Status()[0].ConsecutiveFailures; got != 2 {
		t.Errorf("ConsecutiveFailures = %d, want 2", got)
	}
	if !try(clk, e, time.Millisecond, true) {
		t.Errorf("the third failure in a row did not eject")
	}
}

func TestNeverEject(t *testing.T) {
	b, clk := newTest(t, Config{ConsecutiveFailures: 0}, "a", "b")
	if got := failN(clk, b.endpoint("a"), 100); slices.Contains(got, true) {
		t.Fatalf("ejected with ConsecutiveFailures 0")
	}
	b.SetConfig(Config{ConsecutiveFailures: 2, MaxEjectionPercent: 100})
	if !try(clk, b.endpoint("a"), time.Millisecond, true) {
		t.Errorf("after SetConfig with 2, the 101st failure in a row did not eject")
	}
}

func TestMaxEjectionPercent(t *testing.T) {
	for _, tc := range []struct {
		endpoints, percent int
		want               []bool // ejection of endpoint 0, 1, ... as each fails in turn
	}{
		{4, 50, []bool{true, true, false}},
		{4, 100, []bool{true, true, true, true}},
		{1, 10, []bool{true}}, // at least one may always be ejected
		{3, 0, []bool{true, false}},
		{10, 10, []bool{true, false}},
		{10, 19, []bool{true, false}}, // floor
		{10, 20, []bool{true, true, false}},
	} {
		t.Run(fmt.Sprintf("%d endpoints %d%%", tc.endpoints, tc.percent), func(t *testing.T) {
			addrs := make([]string, tc.endpoints)
			for i := range addrs {
				addrs[i] = fmt.Sprintf("10.0.0.%d:80", i+1)
			}
			b, clk := newTest(t, Config{ConsecutiveFailures: 2, BaseEjectionTime: time.Minute, MaxEjectionPercent: tc.percent}, addrs...)
			for i, want := range tc.want {
				got := failN(clk, b.endpoint(addrs[i]), 2)
				if got[1] != want {
					t.Errorf("endpoint %d ejected: %v, want %v", i, got[1], want)
				}
			}
		})
	}
}

func TestEjectionRefusedThenAllowed(t *testing.T) {
	b, clk := newTest(t, Config{ConsecutiveFailures: 2, BaseEjectionTime: time.Minute, MaxEjectionPercent: 50}, four...)
	failN(clk, b.endpoint(four[0]), 2)
	failN(clk, b.endpoint(four[1]), 2)
	c := b.endpoint(four[2])
	if got := failN(clk, c, 3); slices.Contains(got, true) {
		t.Fatalf("a third of four endpoints ejected at 50%%: %v", got)
	}
	if st := b.Status()[2]; st.ConsecutiveFailures != 3 || st.EjectedUntil != nil {
		t.Errorf("refused endpoint: %+v, want 3 failures, not ejected", st)
	}
	clk.Advance(time.Minute) // the first two come back
	if !try(clk, c, time.Millisecond, true) {
		t.Errorf("the next failure after room was made did not eject")
	}
}

// pickSet is the set of addresses that n picks return.
func pickSet(b *Balancer, avoid *Endpoint, n int) []string {
	seen := map[string]bool{}
	for range n {
		seen[b.Pick(avoid).Addr()] = true
	}
	var out []string
	for a := range seen {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

func TestEligibility(t *testing.T) {
	for _, tc := range []struct {
		name        string
		terminating []string
		eject       []string
		endpoints   []string // default a, b, c
		want        []string
	}{
		{name: "all ready", want: []string{"a", "b", "c"}},
		{name: "ejected ones are skipped", eject: []string{"b"}, want: []string{"a", "c"}},
		{name: "terminating ones only without a ready one", terminating: []string{"b", "c"}, want: []string{"a"}},
		{name: "terminating fallback", terminating: []string{"b", "c"}, eject: []string{"a"}, want: []string{"b", "c"}},
		{name: "terminating fallback skips ejected ones", terminating: []string{"b", "c"}, eject: []string{"a", "b"}, want: []string{"c"}},
		{name: "all terminating", terminating: []string{"a", "b", "c"}, want: []string{"a", "b", "c"}},
		{name: "panic mode: all ejected, all picked", eject: []string{"a", "b", "c"}, want: []string{"a", "b", "c"}},
		{name: "panic mode with terminating ones", terminating: []string{"c"}, eject: []string{"a", "b", "c"}, want: []string{"a", "b", "c"}},
		{name: "a single ejected endpoint", endpoints: []string{"a"}, eject: []string{"a"}, want: []string{"a"}},
		{name: "many ineligible: the scan path", endpoints: strings.Split("a b c d e f g h i j", " "), eject: strings.Split("a b c d e f g h", " "), want: []string{"i", "j"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eps := cond(tc.endpoints == nil, []string{"a", "b", "c"}, tc.endpoints)
			b, clk := newTest(t, Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100}, eps...)
			var targets []Target
			for _, a := range eps {
				targets = append(targets, Target{Addr: a, Terminating: slices.Contains(tc.terminating, a)})
			}
			b.Update(targets)
			for _, a := range tc.eject {
				if !try(clk, b.endpoint(a), time.Millisecond, true) {
					t.Fatalf("%s not ejected", a)
				}
			}
			level(b)
			if got := pickSet(b, nil, 2000); !slices.Equal(got, tc.want) {
				t.Errorf("picked %v, want %v", got, tc.want)
			}
			clk.Advance(time.Minute) // ejections end
			level(b)
			if got, want := pickSet(b, nil, 2000), cond(len(tc.terminating) == len(eps), eps, without(eps, tc.terminating)); !slices.Equal(got, want) {
				t.Errorf("after the ejections' end, picked %v, want %v", got, want)
			}
		})
	}
}

// level gives every endpoint the same estimate, so that tests of
// eligibility are not decided by cost: P2C never picks the costliest of
// several eligible endpoints.
func level(b *Balancer) {
	for _, e := range b.set.Load().eps {
		e.ewma.Store(math.Float64bits(float64(DefaultRTT)))
		e.last.Store(b.now())
	}
}

func without(all, drop []string) []string {
	var out []string
	for _, a := range all {
		if !slices.Contains(drop, a) {
			out = append(out, a)
		}
	}
	return out
}

func TestAvoid(t *testing.T) {
	for _, tc := range []struct {
		name        string
		endpoints   []string
		terminating []string
		eject       []string
		avoid       string
		want        []string
	}{
		{name: "another ready one", endpoints: []string{"a", "b"}, avoid: "a", want: []string{"b"}},
		{name: "two others: both", endpoints: []string{"a", "b", "c"}, avoid: "a", want: []string{"b", "c"}},
		{name: "the only endpoint", endpoints: []string{"a"}, avoid: "a", want: []string{"a"}},
		{name: "the only ready one: again, not a terminating one", endpoints: []string{"a", "b"}, terminating: []string{"b"}, avoid: "a", want: []string{"a"}},
		{name: "the other one is ejected", endpoints: []string{"a", "b"}, eject: []string{"b"}, avoid: "a", want: []string{"a"}},
		{name: "among terminating ones", endpoints: []string{"a", "b", "c"}, terminating: []string{"b", "c"}, eject: []string{"a"}, avoid: "b", want: []string{"c"}},
		{name: "panic mode", endpoints: []string{"a", "b"}, eject: []string{"a", "b"}, avoid: "a", want: []string{"b"}},
		{name: "avoid is ejected anyway", endpoints: []string{"a", "b", "c"}, eject: []string{"a"}, avoid: "a", want: []string{"b", "c"}},
		{name: "many ineligible: the scan path", endpoints: strings.Split("a b c d e f g h i j", " "), eject: strings.Split("a b c d e f g h", " "), avoid: "i", want: []string{"j"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newTest(t, Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100})
			var targets []Target
			for _, a := range tc.endpoints {
				targets = append(targets, Target{Addr: a, Terminating: slices.Contains(tc.terminating, a)})
			}
			b.Update(targets)
			for _, a := range tc.eject {
				try(clk, b.endpoint(a), time.Millisecond, true)
			}
			level(b)
			if got := pickSet(b, b.endpoint(tc.avoid), 2000); !slices.Equal(got, tc.want) {
				t.Errorf("picked %v avoiding %s, want %v", got, tc.avoid, tc.want)
			}
		})
	}
}

// TestCheaperWins: P2C over two endpoints always takes the cheaper one, by
// latency and by requests in flight.
func TestCheaperWins(t *testing.T) {
	b, clk := newTest(t, Config{}, "a", "b")
	a, bb := b.endpoint("a"), b.endpoint("b")
	try(clk, a, 100*time.Millisecond, false) // a: 100 ms, b: 30 ms
	if got := pickSet(b, nil, 100); !slices.Equal(got, []string{"b"}) {
		t.Errorf("picked %v, want the faster b", got)
	}
	// 4 in flight on b: cost 30 × 5 = 150 > 100 × 1.
	for range 4 {
		bb.Start()
	}
	if got := pickSet(b, nil, 100); !slices.Equal(got, []string{"a"}) {
		t.Errorf("picked %v, want a (b has 4 in flight)", got)
	}
}

// TestFastFailureDoesNotAttract: one fast failure makes an endpoint lose to
// a healthy peer of the same speed.
func TestFastFailureDoesNotAttract(t *testing.T) {
	b, clk := newTest(t, Config{}, "a", "b")
	a, bb := b.endpoint("a"), b.endpoint("b")
	try(clk, a, 0, false)
	try(clk, bb, 0, false)
	try(clk, a, 0, true) // fails at once
	if got := pickSet(b, nil, 100); !slices.Equal(got, []string{"b"}) {
		t.Errorf("picked %v, want b", got)
	}
	if got := b.Status()[0].EWMA; got < DefaultRTT {
		t.Errorf("estimate after a fast failure = %v, want at least %v", got, DefaultRTT)
	}
}

func TestIdleEstimateDecays(t *testing.T) {
	b, clk := newTest(t, Config{}, "a")
	try(clk, b.endpoint("a"), 100*time.Millisecond, false)
	clk.Advance(DecayTime)
	want := 100 * math.Exp(-1)
	if got := float64(b.Status()[0].EWMA) / ms; math.Abs(got-want) > 0.01 {
		t.Errorf("estimate after τ idle = %.3f ms, want %.3f", got, want)
	}
}

func TestUpdateKeepsState(t *testing.T) {
	b, clk := newTest(t, Config{ConsecutiveFailures: 2, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100}, "a", "b", "c")
	a, bb, c := b.endpoint("a"), b.endpoint("b"), b.endpoint("c")
	try(clk, a, 80*time.Millisecond, false)
	a.Start() // one in flight
	failN(clk, bb, 2)
	failN(clk, c, 1)
	before := b.Status()
	cStart := c.Start() // in flight on c while c is dropped

	b.Update([]Target{{Addr: "d"}, {Addr: "a"}, {Addr: "b", Terminating: true}, {Addr: "a", Terminating: true}})
	if b.Len() != 3 {
		t.Fatalf("Len = %d, want 3", b.Len())
	}
	if b.endpoint("a") != a || b.endpoint("b") != bb || b.endpoint("c") != nil {
		t.Fatalf("endpoints not kept or not dropped")
	}
	after := b.Status()
	if got := []string{after[0].Addr, after[1].Addr, after[2].Addr}; !slices.Equal(got, []string{"d", "a", "b"}) {
		t.Errorf("order %v, want the targets' order d a b", got)
	}
	wantA := before[0]
	if after[1] != wantA {
		t.Errorf("a after Update: %+v, want %+v (a repeated ready entry keeps it ready)", after[1], wantA)
	}
	wantB := before[1]
	wantB.Terminating = true
	if after[2].Addr != "b" || !after[2].Terminating || after[2].Ejections != 1 || after[2].EjectedUntil == nil || !after[2].EjectedUntil.Equal(*wantB.EjectedUntil) {
		t.Errorf("b after Update: %+v, want %+v", after[2], wantB)
	}
	if after[0].EWMA != DefaultRTT || after[0].InFlight != 0 {
		t.Errorf("new endpoint d: %+v", after[0])
	}
	// The dropped c's try ends safely and never ejects it.
	clk.Advance(time.Millisecond)
	if c.Done(cStart, true) {
		t.Errorf("a dropped endpoint was ejected")
	}
	// Back again, c starts fresh.
	b.Update([]Target{{Addr: "a"}, {Addr: "c"}})
	if st := b.Status()[1]; st.ConsecutiveFailures != 0 || st.EWMA != DefaultRTT {
		t.Errorf("re-added c: %+v, want a fresh endpoint", st)
	}
}

func TestOnEject(t *testing.T) {
	b, clk := newTest(t, Config{ConsecutiveFailures: 1, MaxEjectionPercent: 100}, "a", "b")
	var got []string
	b.OnEject = func(addr string) { got = append(got, addr) }
	try(clk, b.endpoint("b"), time.Millisecond, true)
	try(clk, b.endpoint("b"), time.Millisecond, true) // ends while ejected: no second ejection
	try(clk, b.endpoint("a"), time.Millisecond, true)
	if !slices.Equal(got, []string{"b", "a"}) {
		t.Errorf("OnEject calls %v, want [b a]", got)
	}
}

func TestStatusJSON(t *testing.T) {
	until := time.Date(2026, 1, 1, 0, 0, 30, 0, time.UTC)
	for _, tc := range []struct {
		s    EndpointStatus
		want string
	}{
		{
			EndpointStatus{Addr: "10.0.0.1:80", EWMA: 1500 * time.Microsecond, InFlight: 2},
			`{"address":"10.0.0.1:80","inFlight":2,"consecutiveFailures":0,"ejections":0,"ewmaMs":1.5}`,
		},
		{
			EndpointStatus{Addr: "[fd00::1]:80", Terminating: true, EWMA: 30 * time.Millisecond, ConsecutiveFailures: 5, Ejections: 2, EjectedUntil: &until},
			`{"address":"[fd00::1]:80","terminating":true,"inFlight":0,"consecutiveFailures":5,"ejections":2,"ejectedUntil":"2026-01-01T00:00:30Z","ewmaMs":30}`,
		},
	} {
		got, err := json.Marshal(tc.s)
		if err != nil || string(got) != tc.want {
			t.Errorf("Marshal = %s, %v; want %s", got, err, tc.want)
		}
		var back EndpointStatus
		if err := json.Unmarshal(got, &back); err != nil || back.EWMA != tc.s.EWMA || back.Addr != tc.s.Addr || (back.EjectedUntil == nil) != (tc.s.EjectedUntil == nil) {
			t.Errorf("round trip: %+v, %v; want %+v", back, err, tc.s)
		}
	}
}

func TestStatusEjectedUntil(t *testing.T) {
	b, clk := newTest(t, Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100}, "a")
	try(clk, b.endpoint("a"), time.Millisecond, true)
	st := b.Status()[0]
	if want := clk.t.Add(time.Minute); st.EjectedUntil == nil || !st.EjectedUntil.Equal(want) {
		t.Errorf("EjectedUntil = %v, want %v", st.EjectedUntil, want)
	}
}

func TestConfigNormalized(t *testing.T) {
	for _, tc := range []struct{ in, want Config }{
		{Config{}, Config{BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second}},
		{Config{ConsecutiveFailures: -1, MaxEjectionPercent: 150}, Config{BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 100}},
		{Config{BaseEjectionTime: time.Minute, MaxEjectionTime: time.Second}, Config{BaseEjectionTime: time.Minute, MaxEjectionTime: time.Minute}},
	} {
		if got := tc.in.normalized(); got != tc.want {
			t.Errorf("%+v normalized = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

// TestNoAllocs guards the hot path: Pick, Start and Done allocate nothing,
// on the fast path, the scan path, failures and ejections included.
func TestNoAllocs(t *testing.T) {
	b, clk := newTest(t, Config{ConsecutiveFailures: 3, BaseEjectionTime: time.Second, MaxEjectionPercent: 100}, four...)
	var prev *Endpoint
	i := 0
	if n := testing.AllocsPerRun(10_000, func() {
		e := b.Pick(prev)
		s := e.Start()
		clk.Advance(time.Millisecond)
		e.Done(s, i%2 == 0 && e.addr == four[0]) // four[0] fails, sometimes ejected
		prev = e
		i++
	}); n != 0 {
		t.Errorf("Pick+Start+Done: %v allocs per run, want 0", n)
	}
	// The scan path: all but one ejected.
	for _, a := range four[1:] {
		failN(clk, b.endpoint(a), 3)
	}
	if n := testing.AllocsPerRun(1000, func() { b.Pick(b.endpoint(four[0])) }); n != 0 {
		t.Errorf("Pick on the scan path: %v allocs per run, want 0", n)
	}
}

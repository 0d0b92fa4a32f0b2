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

// try runs one try on e that lasts d and returns whether it ejected e.
func try(clk *fakeClock, e *Endpoint, d time.Duration, failed bool) bool {
	start := e.Start()
	clk.Advance(d)
	ejected, _ := e.Done(start, failed)
	return ejected
}

// failN runs n failed tries of 1 ms on e and returns Done's answers.
func failN(clk *fakeClock, e *Endpoint, n int) []bool {
	var out []bool
	for range n {
		out = append(out, try(clk, e, time.Millisecond, true))
	}
	return out
}

func TestEWMA(t *testing.T) {
	up, down := 1-math.Exp(-0.5), 1-math.Exp(-1) // dt = τ/2, dt = τ
	for _, tc := range []struct {
		name         string
		prev         float64
		dt           time.Duration
		sample, want float64
	}{
		{"on an unknown estimate a sample sets it", unknown, time.Hour, 7 * ms, 7 * ms},
		{"a higher sample weighs 1-exp(-dt/τ)", 30 * ms, DecayTime / 2, 50 * ms, 30*ms + 20*ms*up},
		{"one sample raises it at most MaxRise ×", 30 * ms, 20 * DecayTime, 200 * ms, 60 * ms},
		{"... or to MaxRise × MinEstimate under it", 0.1 * ms, 20 * DecayTime, 200 * ms, 2 * ms},
		{"a lower sample weighs 1-exp(-dt/τ)", 30 * ms, DecayTime, 1 * ms, 30*ms - 29*ms*down},
		{"a sample right away moves nothing", 30 * ms, 0, 80 * ms, 30 * ms},
		{"a higher sample 1 ms after weighs 1/5000", 1 * ms, time.Millisecond, 21 * ms, 1.004 * ms},
		{"a lower sample 1 ms after weighs 1/5000", 1 * ms, time.Millisecond, 0, 0.9998 * ms},
		{"a sample after many τ is nearly all", 30 * ms, 20 * DecayTime, 1 * ms, 1 * ms},
		{"an equal sample keeps it", 5 * ms, time.Second, 5 * ms, 5 * ms},
		{"a clock that went back counts as no time", 30 * ms, -time.Second, 1 * ms, 30 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ewma(tc.prev, int64(tc.dt), tc.sample)
			if math.Abs(got-tc.want) > 1e-4*ms {
				t.Errorf("ewma(%v, %v, %v) = %v, want %v", tc.prev/ms, tc.dt, tc.sample/ms, got/ms, tc.want/ms)
			}
		})
	}
}

// TestWarmupMedian: during its first WarmupSamples tries an endpoint's
// estimate is their median, so a stall among them (here 2 s, as a busy
// node gives) leaves no trace; then the EWMA goes on from the median.
func TestWarmupMedian(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want float64
	}{
		{[]float64{7}, 7},
		{[]float64{7, 1}, 4},
		{[]float64{2000, 0.1, 0.1}, 0.1},
		{[]float64{0.1, 0.2, 2000, 0.1, 0.3, 0.1, 0.2, 0.1, 0.2, 0.1}, 0.15},
	} {
		if got := median(tc.xs); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("median(%v) = %v, want %v", tc.xs, got, tc.want)
		}
	}
	b, clk := newTest(t, Config{}, "a")
	e := b.endpoint("a")
	for i := range WarmupSamples {
		clk.Advance(time.Millisecond)
		d := 100 * time.Microsecond
		if i == 2 {
			d = 2 * time.Second
		}
		try(clk, e, d, false)
	}
	if got := b.Status()[0].EWMA; got > 200*time.Microsecond {
		t.Fatalf("estimate %v after a 2 s stall among %d tries of 100 µs, want the median, 100 µs", got, WarmupSamples)
	}
	if n := testing.AllocsPerRun(100, func() { _ = median(e.warm[:]) }); n != 0 {
		t.Fatalf("median allocates %v times", n)
	}
}

func TestDecayAndWeight(t *testing.T) {
	for _, x := range []float64{0, 1e-9, 1e-6, 1e-4, 9.99e-4, 1e-3, 0.5, 1, 10, 100} {
		if got, want := decay(x), math.Exp(-x); math.Abs(got-want) > 1e-6*want {
			t.Errorf("decay(%g) = %g, want %g", x, got, want)
		}
		if got, want := weight(x), -math.Expm1(-x); math.Abs(got-want) > 1e-6*want {
			t.Errorf("weight(%g) = %g, want %g", x, got, want)
		}
	}
}

// TestSpikeAndShift is the estimator's point: a warm endpoint getting
// every fourth request of one sequential client (3.5 ms between its tries)
// barely moves for a 20 ms spike, and one that turns 50 ms slower crosses
// MinEstimate within a handful of samples and is near its new latency
// within a second.
func TestSpikeAndShift(t *testing.T) {
	b, clk := newTest(t, Config{}, "a")
	e := b.endpoint("a")
	sample := func(d time.Duration) float64 {
		clk.Advance(3500 * time.Microsecond)
		try(clk, e, d, false)
		return float64(b.Status()[0].EWMA) / ms
	}
	try(clk, e, 5*time.Millisecond, false) // a slow first try (connect) ...
	for range WarmupSamples - 2 {
		sample(500 * time.Microsecond)
	}
	// ... is averaged out: (5 + 9 × 0.5) / 10 < MinEstimate, where it
	// makes no difference in a duel.
	if got := sample(500 * time.Microsecond); got >= float64(MinEstimate)/ms {
		t.Fatalf("estimate %.3f ms after a 5 ms first try and %d of 0.5 ms, want under %v", got, WarmupSamples-1, MinEstimate)
	}
	for range 100 {
		sample(500 * time.Microsecond)
	}
	before := sample(500 * time.Microsecond)
	spike := sample(20 * time.Millisecond)
	if spike-before > 0.1 {
		t.Errorf("estimate %.3f ms after a 20 ms spike on %.3f, want at most 0.1 ms more", spike, before)
	}
	if got := sample(500 * time.Microsecond); got-before > 0.1 {
		t.Errorf("estimate %.3f ms after the sample that follows a 20 ms spike on %.3f, want at most 0.1 ms more", got, before)
	}
	// A 500 ms stall (of the sidecar's node, or of the pod) on one try
	// weighs as the 4 ms since the previous try began, not as its own
	// 500 ms: about 500 ms × 4 ms/1 s = 2 ms more, not ~200.
	if got := sample(500 * time.Millisecond); got-spike > 2.1 {
		t.Errorf("estimate %.3f ms after a 500 ms stall on %.3f, want at most 2.1 ms more", got, spike)
	}
	for range 50 {
		sample(500 * time.Microsecond)
	}
	k := 0
	for ; sample(50*time.Millisecond) < float64(MinEstimate)/ms; k++ {
	}
	if k > 20 {
		t.Errorf("%d samples of 50 ms to cross %v, want at most 20 (70 ms at this rate)", k+1, MinEstimate)
	}
	// Turned slow, it is sampled every 50 ms (at most; P2C sends it less).
	for range 100 {
		try(clk, e, 50*time.Millisecond, false)
	}
	if got := float64(b.Status()[0].EWMA) / ms; got < 30 {
		t.Errorf("estimate %.1f ms after 5 s of 50 ms samples, want past 30 (1 - 1/e of the way)", got)
	}
}

// TestFailureNeverLowersEstimate: a failed try counts max(latency,
// estimate), and leaves an unknown estimate unknown.
func TestFailureNeverLowersEstimate(t *testing.T) {
	b, clk := newTest(t, Config{}, "a")
	e := b.endpoint("a")
	est := func() time.Duration { return b.Status()[0].EWMA }
	failN(clk, e, 3)
	if got := est(); got != 0 || math.Float64frombits(e.ewma.Load()) >= 0 {
		t.Fatalf("estimate after failures only: %v, want unknown", got)
	}
	for range WarmupSamples + 1 { // past warm-up, where a median would hide one slow failure
		try(clk, e, 10*time.Millisecond, false)
	}
	want := est() // 10 ms, decayed for 10 ms since the try's start
	if want < 9*time.Millisecond || want > 10*time.Millisecond {
		t.Fatalf("estimate after the first success = %v, want 10ms", want)
	}
	for range 5 {
		try(clk, e, 0, true) // fast failures
	}
	if got := est(); got < want {
		t.Errorf("estimate after fast failures = %v, want still %v", got, want)
	}
	clk.Advance(time.Second)               // a sample weighs the time since the previous one
	try(clk, e, 40*time.Millisecond, true) // a slow failure counts its slowness
	if got := est(); got <= 10*time.Millisecond {
		t.Errorf("estimate after a 40 ms failure = %v, want above 10ms", got)
	}
}

func TestNewEndpointIsUnknown(t *testing.T) {
	b, _ := newTest(t, Config{}, "a")
	if got := b.Status()[0].EWMA; got != 0 {
		t.Errorf("EWMA of a new endpoint = %v, want 0 (unknown)", got)
	}
	if got := b.endpoint("a").estimate(b.now()); got >= 0 {
		t.Errorf("estimate of a new endpoint = %v, want unknown", got)
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

// TestShares is the fairness proof: simulated traffic over four endpoints,
// with noisy latencies (see noisy), from many clients at once (concurrent:
// an arrival every 100 µs, ~10 in flight) and from one client on one
// connection (sequential: the next request 50 µs after the previous
// answer, nothing else in flight).
func TestShares(t *testing.T) {
	slow := four[3]
	const concurrent, sequential = false, true
	for _, tc := range []struct {
		name       string
		sequential bool
		latency    func(string) time.Duration
		fails      func(string) bool
		check      func(t *testing.T, s *sim)
	}{
		{
			name: "equal endpoints, concurrent", sequential: concurrent,
			latency: func(string) time.Duration { return time.Millisecond },
			check:   equalShares,
		},
		{
			name: "equal endpoints, sequential", sequential: sequential,
			latency: func(string) time.Duration { return time.Millisecond },
			check:   equalShares,
		},
		{
			name: "equal sub-millisecond endpoints, sequential", sequential: sequential,
			latency: func(string) time.Duration { return 300 * time.Microsecond },
			check:   equalShares,
		},
		{
			// As identical gRPC pods measured on a busy 2-core node
			// (1.0-1.5 ms, for seconds): within Tolerance, equal.
			name: "endpoints 1-1.45 ms apart above the floor, sequential", sequential: sequential,
			latency: func(a string) time.Duration {
				return map[string]time.Duration{four[0]: 1000, four[1]: 1200, four[2]: 1350, four[3]: 1450}[a] * time.Microsecond
			},
			check: equalShares,
		},
		{
			name: "one endpoint 50 ms slower, concurrent", sequential: concurrent,
			latency: func(a string) time.Duration { return cond(a == slow, 51*time.Millisecond, time.Millisecond) },
			check:   shareBelow(slow, 0.05),
		},
		{
			name: "one endpoint 50 ms slower, sequential", sequential: sequential,
			latency: func(a string) time.Duration { return cond(a == slow, 51*time.Millisecond, time.Millisecond) },
			check:   shareBelow(slow, 0.05),
		},
		{
			// A failure never lowers the estimate, so this endpoint
			// does not look 10× faster than the others: it gets its
			// share, and no more.
			name: "one endpoint failing in 100 µs, never ejected, concurrent", sequential: concurrent,
			latency: func(a string) time.Duration { return cond(a == slow, 100*time.Microsecond, time.Millisecond) },
			fails:   func(a string) bool { return a == slow },
			check:   equalShares,
		},
		{
			name: "one endpoint failing in 100 µs, never ejected, sequential", sequential: sequential,
			latency: func(a string) time.Duration { return cond(a == slow, 100*time.Microsecond, time.Millisecond) },
			fails:   func(a string) bool { return a == slow },
			check:   equalShares,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newTest(t, Config{}, four...)
			s := newSim(b, clk, cond(tc.sequential, 50*time.Microsecond, 100*time.Microsecond), noisy(tc.latency), tc.fails)
			s.sequential = tc.sequential
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

// TestFailingEndpointInSimulation: an endpoint that fails every try keeps
// its share, so it is ejected on exactly its ConsecutiveFailures-th try
// within a few × ConsecutiveFailures × (number of endpoints) requests,
// gets no traffic while ejected, gets its share again after the base time,
// and, failing on, is ejected again as promptly, for twice the base.
func TestFailingEndpointInSimulation(t *testing.T) {
	for _, sequential := range []bool{false, true} {
		t.Run(cond(sequential, "sequential", "concurrent"), func(t *testing.T) {
			const n = 5
			limit := 3 * n * len(four) // requests to an ejection
			base := 10 * time.Second
			b, clk := newTest(t, Config{ConsecutiveFailures: n, BaseEjectionTime: base, MaxEjectionTime: time.Hour, MaxEjectionPercent: 50}, four...)
			bad := b.endpoint(four[0])
			s := newSim(b, clk, cond(sequential, 50*time.Microsecond, 100*time.Microsecond), noisy(func(string) time.Duration { return time.Millisecond }), func(a string) bool { return a == bad.addr })
			s.sequential = sequential

			type ejection struct {
				tries    int // the bad endpoint's tries that ended since it was last eligible
				requests int // requests since it was last eligible
				at, till time.Time
			}
			var ejections []ejection
			var picksAfter []time.Time // picks of bad after its ejections end
			tries, triesBack, since := 0, 0, 0
			back := time.Time{} // when it was last eligible (tries, requests then)
			s.onDone = func(e *Endpoint, failed, ejected bool) {
				if e != bad {
					if ejected {
						t.Errorf("%s, which never fails, was ejected", e.addr)
					}
					return
				}
				tries++
				if ejected {
					ejections = append(ejections, ejection{tries - triesBack, s.total() - since, clk.t, *b.Status()[0].EjectedUntil})
				}
			}
			s.onPick = func(e *Endpoint) {
				if len(ejections) > 0 {
					if last := ejections[len(ejections)-1]; back.Before(last.till) && !clk.t.Before(last.till) {
						back, triesBack, since = last.till, tries, s.total()-1
					}
				}
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
			for i := 0; len(ejections) < 2 && i < 20_000; i++ {
				s.run(100)
			}
			if len(ejections) < 2 {
				t.Fatalf("ejections %v after %v, want 2", ejections, clk.t.Sub(newFake().t))
			}
			first, second := ejections[0], ejections[1]
			if first.tries != n {
				t.Errorf("first ejection on try %d of the endpoint, want %d", first.tries, n)
			}
			if first.requests > limit {
				t.Errorf("first ejection after %d requests, want at most %d", first.requests, limit)
			}
			if d := first.till.Sub(first.at); d != base {
				t.Errorf("first ejection lasted %v, want %v", d, base)
			}
			if len(picksAfter) == 0 || picksAfter[0].Before(first.till) {
				t.Errorf("tries after the first ejection: %v, want some from %v on", picksAfter, first.till)
			}
			// (Tries in flight when it was ejected end while it is out,
			// and do not count.)
			if second.tries != n {
				t.Errorf("second ejection on try %d of the endpoint since it came back, want %d", second.tries, n)
			}
			if second.requests > limit {
				t.Errorf("second ejection %d requests after the endpoint came back, want at most %d", second.requests, limit)
			}
			if d := second.till.Sub(second.at); d != 2*base {
				t.Errorf("second ejection lasted %v, want %v", d, 2*base)
			}
			t.Logf("bad endpoint: %d tries of %d; ejected after %d requests at %v, back at %v, ejected again after %d requests at %v",
				tries, s.total(), first.requests, first.at.Sub(newFake().t), first.till.Sub(newFake().t), second.requests, second.at.Sub(newFake().t))
		})
	}
}

// TestNewEndpointGetsFairShare: scaling up moves load at once: an endpoint
// added to four warm ones gets about a fifth of the next 100 requests. It
// may get more for a while: with noise, the asymmetric EWMA of a warm
// endpoint settles above its mean latency (rises weigh 10× falls; here
// ~1.1 ms concurrent, ~2 ms sequential, for 1 ms ± 20 % with 1 % spikes
// of 5–20 ms), while a new one starts from the mean of its first samples
// and climbs to its peers' level over seconds.
func TestNewEndpointGetsFairShare(t *testing.T) {
	for _, sequential := range []bool{false, true} {
		t.Run(cond(sequential, "sequential", "concurrent"), func(t *testing.T) {
			b, clk := newTest(t, Config{}, four...)
			s := newSim(b, clk, cond(sequential, 50*time.Microsecond, 100*time.Microsecond), noisy(func(string) time.Duration { return time.Millisecond }), nil)
			s.sequential = sequential
			s.run(20_000)
			const added = "10.0.0.5:80"
			var targets []Target
			for _, a := range append(four[:4:4], added) {
				targets = append(targets, Target{Addr: a})
			}
			b.Update(targets)
			for _, k := range []int{100, 1000} {
				before := s.picks[added]
				s.run(k)
				got := s.picks[added] - before
				t.Logf("the new endpoint got %d of the next %d requests", got, k)
				// At least half its share, and at most twice.
				if got < k/10 || got > k*2/5 {
					t.Errorf("the new endpoint got %d of %d requests, want about %d", got, k, k/5)
				}
			}
		})
	}
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
		{name: "terminating fallback skips ejected ones", endpoints: []string{"a", "b", "c", "d"}, terminating: []string{"b", "c", "d"}, eject: []string{"a", "b"}, want: []string{"c", "d"}},
		{name: "all terminating", terminating: []string{"a", "b", "c"}, want: []string{"a", "b", "c"}},
		{name: "panic mode: all ejected, all picked", eject: []string{"a", "b", "c"}, want: []string{"a", "b", "c"}},
		{name: "panic mode with terminating ones", terminating: []string{"c"}, eject: []string{"a", "b", "c"}, want: []string{"a", "b", "c"}},
		{name: "a single ejected endpoint", endpoints: []string{"a"}, eject: []string{"a"}, want: []string{"a"}},
		{name: "many ineligible: the scan path", endpoints: strings.Split("a b c d e f g h i j", " "), eject: strings.Split("a b c d e", " "), want: strings.Split("f g h i j", " ")},
		{name: "panic mode: fewer than half not ejected, all picked", endpoints: strings.Split("a b c d e f g h i j", " "), eject: strings.Split("a b c d e f g h", " "), want: strings.Split("a b c d e f g h i j", " ")},
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
// eligibility are not decided by cost.
func level(b *Balancer) {
	for _, e := range b.set.Load().eps {
		e.ewma.Store(math.Float64bits(float64(5 * time.Millisecond)))
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
		{name: "many ineligible: the scan path", endpoints: strings.Split("a b c d e f g h i j", " "), eject: strings.Split("a b c d e", " "), avoid: "i", want: strings.Split("f g h j", " ")},
		{name: "panic mode: fewer than half not ejected", endpoints: strings.Split("a b c d e f g h i j", " "), eject: strings.Split("a b c d e f g h", " "), avoid: "i", want: strings.Split("a b c d e f g h j", " ")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := ejectedSet(t, tc.endpoints, tc.terminating, tc.eject)
			if got := pickSet(b, b.endpoint(tc.avoid), 2000); !slices.Equal(got, tc.want) {
				t.Errorf("picked %v avoiding %s, want %v", got, tc.avoid, tc.want)
			}
		})
	}
}

// TestDuel: x wins with probability cost(y) / (cost(x) + cost(y)), with
// cost max(estimate, MinEstimate) × (in flight + 1), the slower estimate
// divided by Tolerance but never below the faster one, an unknown estimate
// counting as the other's, and the requests in flight of an endpoint whose
// last try failed as at least the other's.
func TestDuel(t *testing.T) {
	for _, tc := range []struct {
		name      string
		x, y      time.Duration // estimates; 0: unknown
		xIn, yIn  int           // requests in flight
		xFailing  bool          // x's last try failed
		wantXWins float64
	}{
		{"equal", 5 * time.Millisecond, 5 * time.Millisecond, 0, 0, false, 0.5},
		{"x 6× slower: 3× costlier", 30 * time.Millisecond, 5 * time.Millisecond, 0, 0, false, 0.25},
		{"requests in flight count", 5 * time.Millisecond, 5 * time.Millisecond, 0, 3, false, 0.8},
		{"latency and requests in flight", 20 * time.Millisecond, 1 * time.Millisecond, 0, 19, false, 2.0 / 3},
		{"below MinEstimate counts as MinEstimate", 100 * time.Microsecond, 900 * time.Microsecond, 0, 0, false, 0.5},
		{"above MinEstimate counts", 100 * time.Microsecond, 3 * time.Millisecond, 0, 0, false, 0.6},
		{"within Tolerance: equal", 1400 * time.Microsecond, 1 * time.Millisecond, 0, 0, false, 0.5},
		{"within Tolerance, above the floor", 2 * time.Millisecond, 3900 * time.Microsecond, 0, 0, false, 0.5},
		{"at Tolerance: equal", 2 * time.Millisecond, 1 * time.Millisecond, 0, 0, false, 0.5},
		{"past Tolerance: divided by it", 8 * time.Millisecond, 2 * time.Millisecond, 0, 0, false, 1.0 / 3},
		{"x faster past Tolerance", 2 * time.Millisecond, 8 * time.Millisecond, 0, 0, false, 2.0 / 3},
		{"a pod 50× slower counts 25×", 50 * time.Millisecond, 1 * time.Millisecond, 0, 0, false, 1.0 / 26},
		{"Tolerance and requests in flight", 3 * time.Millisecond, 2 * time.Millisecond, 1, 0, false, 1.0 / 3},
		{"unknown x counts as y", 0, 40 * time.Millisecond, 0, 0, false, 0.5},
		{"unknown y counts as x", 40 * time.Millisecond, 0, 0, 0, false, 0.5},
		{"unknown x with requests in flight", 0, 40 * time.Millisecond, 1, 0, false, 1.0 / 3},
		{"both unknown", 0, 0, 0, 3, false, 0.8},
		{"failing x: fewer requests in flight do not help", 5 * time.Millisecond, 5 * time.Millisecond, 0, 3, true, 0.5},
		{"failing x: more requests in flight count", 5 * time.Millisecond, 5 * time.Millisecond, 3, 0, true, 0.2},
		{"failing x, unknown", 0, 5 * time.Millisecond, 0, 3, true, 0.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, _ := newTest(t, Config{}, "x", "y")
			x, y := b.endpoint("x"), b.endpoint("y")
			for _, c := range []struct {
				e  *Endpoint
				d  time.Duration
				in int
			}{{x, tc.x, tc.xIn}, {y, tc.y, tc.yIn}} {
				if c.d > 0 {
					c.e.ewma.Store(math.Float64bits(float64(c.d)))
					c.e.last.Store(b.now())
				}
				c.e.inFlight.Add(int64(c.in))
			}
			if tc.xFailing {
				x.health.Store(failedMark)
			}
			// The threshold, exactly: x wins below it.
			for _, r := range []float64{tc.wantXWins - 1e-9, tc.wantXWins + 1e-9} {
				b.float = func() float64 { return r }
				if got, want := b.duel(x, y, b.now()), cond(r < tc.wantXWins, x, y); got != want {
					t.Errorf("duel with random %v: %s won, want %s", r, got.addr, want.addr)
				}
				// And the same the other way round.
				if got, want := b.duel(y, x, b.now()), cond(r < 1-tc.wantXWins, y, x); got != want {
					t.Errorf("duel(y, x) with random %v: %s won, want %s", r, got.addr, want.addr)
				}
			}
		})
	}
}

// TestShareByCost: over many picks between two endpoints, each gets its
// share by cost: a 20 ms endpoint counts 10× a 1 ms one (Tolerance).
func TestShareByCost(t *testing.T) {
	b, clk := newTest(t, Config{}, "a", "b")
	try(clk, b.endpoint("a"), 20*time.Millisecond, false)
	try(clk, b.endpoint("b"), 1*time.Millisecond, false)
	n, a := 100_000, 0
	for range n {
		if b.Pick(nil).addr == "a" {
			a++
		}
	}
	if got := float64(a) / float64(n); math.Abs(got-1.0/11) > 0.005 {
		t.Errorf("a (20 ms) got %.2f%% against b (1 ms), want %.2f%%", 100*got, 100.0/11)
	}
}

// TestFastFailureDoesNotAttract: fast failures leave an endpoint's estimate
// as it was, so it keeps its share against a peer of the same speed, no
// more.
func TestFastFailureDoesNotAttract(t *testing.T) {
	b, clk := newTest(t, Config{}, "a", "b")
	a, bb := b.endpoint("a"), b.endpoint("b")
	try(clk, a, 5*time.Millisecond, false)
	try(clk, bb, 5*time.Millisecond, false)
	for range 10 {
		try(clk, a, 0, true) // fails at once
	}
	if got := b.Status()[0].EWMA; got < 5*time.Millisecond {
		t.Errorf("estimate after fast failures = %v, want at least 5ms", got)
	}
	n, picks := 10_000, 0
	for range n {
		if b.Pick(nil) == a {
			picks++
		}
	}
	if got := float64(picks) / float64(n); math.Abs(got-0.5) > 0.02 {
		t.Errorf("the failing endpoint got %.1f%%, want 50%%", 100*got)
	}
}

func TestIdleEstimateDecays(t *testing.T) {
	b, clk := newTest(t, Config{}, "a")
	try(clk, b.endpoint("a"), 100*time.Millisecond, false)
	clk.Advance(DecayTime - 100*time.Millisecond) // τ after the try's start, its date
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
	try(clk, c, 50*time.Millisecond, false)
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
	if after[0].EWMA != 0 || after[0].InFlight != 0 {
		t.Errorf("new endpoint d: %+v", after[0])
	}
	// The dropped c's try ends safely and never ejects it.
	clk.Advance(time.Millisecond)
	if ejected, _ := c.Done(cStart, true); ejected {
		t.Errorf("a dropped endpoint was ejected")
	}
	// Back again, c starts fresh.
	b.Update([]Target{{Addr: "a"}, {Addr: "c"}})
	if st := b.Status()[1]; st.ConsecutiveFailures != 0 || st.EWMA != 0 {
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

// ejectedSet is a balancer over endpoints (those in terminating
// terminating) with each of eject ejected by one failure (no cap), their
// estimates levelled: what Pick may choose is then by eligibility alone.
func ejectedSet(t *testing.T, endpoints, terminating, eject []string) *Balancer {
	t.Helper()
	b, clk := newTest(t, Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100})
	var targets []Target
	for _, a := range endpoints {
		targets = append(targets, Target{Addr: a, Terminating: slices.Contains(terminating, a)})
	}
	b.Update(targets)
	for _, a := range eject {
		try(clk, b.endpoint(a), time.Millisecond, true)
	}
	level(b)
	return b
}

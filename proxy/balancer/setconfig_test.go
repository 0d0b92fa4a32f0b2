package balancer

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// TestSetConfigCutsEjections: a new ejection policy ends the ejections it
// no longer allows. Ejection turned off (an operator's answer to healthy
// pods ejected) let them back only when their 300 s ran out, and a
// shorter maxEjectionTime did not shorten them: SetConfig only stored the
// policy. Panic mode, which those ejections put in force, ends with them.
func TestSetConfigCutsEjections(t *testing.T) {
	const long = 300 * time.Second
	before := Config{ConsecutiveFailures: 1, BaseEjectionTime: long, MaxEjectionTime: long}
	for _, tc := range []struct {
		name    string
		percent int      // before's MaxEjectionPercent
		addrs   []string // endpoints; the first len(eject) are ejected
		eject   int
		after   Config
		left    time.Duration // each ejection's time left after SetConfig; 0: none
		panic   bool          // panic mode in force after SetConfig
	}{
		{"ejection off", 50, []string{"a", "b", "c"}, 1, Config{ConsecutiveFailures: 0}, 0, false},
		{"ejection off, negative", 50, []string{"a", "b", "c"}, 1, Config{ConsecutiveFailures: -1}, 0, false},
		{"shorter maximum", 50, []string{"a", "b", "c"}, 1,
			Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Second, MaxEjectionTime: time.Second}, time.Second, false},
		{"shorter maximum, below what is left", 50, []string{"a", "b", "c"}, 1,
			Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Second, MaxEjectionTime: 100 * time.Second}, 100 * time.Second, false},
		{"shorter maximum, above what is left", 50, []string{"a", "b", "c"}, 1,
			Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Second, MaxEjectionTime: 295 * time.Second}, 290 * time.Second, false},
		{"longer maximum", 50, []string{"a", "b", "c"}, 1,
			Config{ConsecutiveFailures: 1, BaseEjectionTime: long, MaxEjectionTime: time.Hour}, 290 * time.Second, false},
		{"threshold changed", 50, []string{"a", "b", "c"}, 1,
			Config{ConsecutiveFailures: 5, BaseEjectionTime: long, MaxEjectionTime: long}, 290 * time.Second, false},
		{"unchanged", 50, []string{"a", "b", "c"}, 1, before, 290 * time.Second, false},
		// Every endpoint out: panic mode, which ends with the ejections.
		{"panic, ejection off", 100, []string{"a", "b"}, 2, Config{ConsecutiveFailures: 0}, 0, false},
		{"panic, shorter maximum", 100, []string{"a", "b"}, 2,
			Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Second, MaxEjectionTime: time.Second}, time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := before
			cfg.MaxEjectionPercent = tc.percent
			b, clk := newTest(t, cfg, tc.addrs...)
			for _, a := range tc.addrs[:tc.eject] {
				if !try(clk, b.endpoint(a), time.Millisecond, true) {
					t.Fatalf("%s not ejected", a)
				}
			}
			clk.Advance(10 * time.Second)
			after := tc.after
			if after.MaxEjectionPercent == 0 {
				after.MaxEjectionPercent = tc.percent
			}
			b.SetConfig(after)
			for i, st := range b.Status() {
				var left time.Duration
				if st.EjectedUntil != nil {
					left = st.EjectedUntil.Sub(clk.t)
				}
				want := time.Duration(0)
				if i < tc.eject {
					want = tc.left
				}
				if left != want {
					t.Errorf("%s: ejected for %v more, want %v", st.Addr, left, want)
				}
				if i < tc.eject && st.Ejections != 1 {
					t.Errorf("%s: ejection count %d, want 1 (SetConfig keeps counts)", st.Addr, st.Ejections)
				}
			}
			now := b.now()
			if p := b.panicUntil.Load(); tc.panic != (p > now) || p > now+int64(tc.left) {
				t.Errorf("panicUntil %v from now, want panic %v ending by %v", time.Duration(p-now), tc.panic, tc.left)
			}
			if tc.left == 0 {
				level(b)
				if got := pickSet(b, nil, 200); !slices.Equal(got, tc.addrs) {
					t.Errorf("picks reach %v, want every endpoint %v", got, tc.addrs)
				}
			}
			if tc.left > 0 {
				clk.Advance(tc.left)
				for _, st := range b.Status() {
					if st.EjectedUntil != nil {
						t.Errorf("%s still ejected at the end it was given", st.Addr)
					}
				}
			}
		})
	}
}

// TestSetConfigThenEject: after a cut, ejection runs by the new policy:
// off, a failure ejects nothing; on again, a failure ejects for the new
// base × the count, which the cut kept.
func TestSetConfigThenEject(t *testing.T) {
	b, clk := newTest(t, Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Minute, MaxEjectionPercent: 50}, "a", "b", "c")
	a := b.endpoint("a")
	if !try(clk, a, time.Millisecond, true) {
		t.Fatal("a not ejected")
	}
	b.SetConfig(Config{ConsecutiveFailures: 0, MaxEjectionPercent: 50})
	if try(clk, a, time.Millisecond, true) {
		t.Error("ejected with ejection off")
	}
	b.SetConfig(Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Second, MaxEjectionPercent: 50})
	if !try(clk, a, time.Millisecond, true) {
		t.Fatal("not ejected with ejection on again")
	}
	if st := b.Status()[0]; st.EjectedUntil == nil || st.EjectedUntil.Sub(clk.t) != 2*time.Second || st.Ejections != 2 {
		t.Errorf("ejected until %v from now, count %d; want 2s, 2", st.EjectedUntil, st.Ejections)
	}
}

// TestSetConfigConcurrent: SetConfig cutting ejections while failures
// eject and Update changes the endpoints (the race detector checks the
// locking); once ejection is off, nothing is ejected and panic mode is
// over, whatever ran before.
func TestSetConfigConcurrent(t *testing.T) {
	on := Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Hour, MaxEjectionPercent: 100}
	b := New(on, nil)
	targets := []Target{{Addr: "a"}, {Addr: "b"}, {Addr: "c"}, {Addr: "d"}}
	b.Update(targets)
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b.Update(targets[i%2:])
			b.SetConfig(Config{ConsecutiveFailures: i % 2, BaseEjectionTime: time.Hour, MaxEjectionTime: time.Duration(1+i%3) * time.Hour, MaxEjectionPercent: 100})
		}
	})
	var workers sync.WaitGroup
	for range 4 {
		workers.Go(func() {
			for range 2000 {
				e := b.Pick()
				e.Done(e.Start(), true)
			}
		})
	}
	workers.Wait()
	close(stop)
	bg.Wait()
	b.Update(targets)
	b.SetConfig(Config{ConsecutiveFailures: 0})
	for _, st := range b.Status() {
		if st.EjectedUntil != nil {
			t.Errorf("%s ejected with ejection off", st.Addr)
		}
	}
	if p := b.panicUntil.Load(); p != 0 {
		t.Errorf("panicUntil %d with nothing ejected, want 0", p)
	}
}

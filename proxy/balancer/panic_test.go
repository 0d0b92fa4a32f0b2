package balancer

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// addrs is n endpoint addresses, "e0" ... "e<n-1>".
func addrs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("e%d", i)
	}
	return out
}

// picks counts the endpoints of n first-try picks.
func picks(b *Balancer, n int) map[string]int {
	got := map[string]int{}
	for range n {
		got[b.Pick().Addr()]++
	}
	return got
}

// checkPicks fails unless picks went to want and want only, each endpoint
// getting at least half of an even share.
func checkPicks(t *testing.T, got map[string]int, want []string, total int) {
	t.Helper()
	var keys []string
	for a := range got {
		keys = append(keys, a)
	}
	slices.Sort(keys)
	if w := slices.Sorted(slices.Values(want)); !slices.Equal(keys, w) {
		t.Fatalf("picked %v, want %v (counts %v)", keys, w, got)
	}
	for _, a := range want {
		if got[a] < total/len(want)/2 {
			t.Errorf("%s got %d of %d picks, want about %d (counts %v)", a, got[a], total, total/len(want), got)
		}
	}
}

// TestPanicThreshold: panic mode (every endpoint eligible, ejected ones
// included) is in force once fewer than half of the endpoints are not
// ejected, as Envoy's default healthy_panic_threshold (50 %), and not only
// when every endpoint is out. With MaxEjectionPercent 100, 9 of 10 pods
// ejected used to send every request to the tenth. With the default
// MaxEjectionPercent, 50, ejections never reach it.
func TestPanicThreshold(t *testing.T) {
	const total = 4000
	for _, tc := range []struct {
		n, fail, pct int // endpoints, endpoints failing, MaxEjectionPercent
		panic        bool
	}{
		{n: 2, fail: 1, pct: 100},
		{n: 2, fail: 2, pct: 100, panic: true},
		{n: 3, fail: 1, pct: 100},
		{n: 3, fail: 2, pct: 100, panic: true},
		{n: 4, fail: 2, pct: 100},
		{n: 4, fail: 3, pct: 100, panic: true},
		{n: 10, fail: 5, pct: 100},
		{n: 10, fail: 6, pct: 100, panic: true},
		{n: 10, fail: 9, pct: 100, panic: true},
		{n: 10, fail: 10, pct: 100, panic: true},
		{n: 100, fail: 50, pct: 100},
		{n: 100, fail: 51, pct: 100, panic: true},
		{n: 100, fail: 99, pct: 100, panic: true},
		{n: 10, fail: 9, pct: 60, panic: true}, // 6 ejected
		// The default: ejections stop at half, no panic.
		{n: 2, fail: 2, pct: 50},
		{n: 3, fail: 3, pct: 50},
		{n: 10, fail: 10, pct: 50},
		{n: 100, fail: 100, pct: 50},
	} {
		t.Run(fmt.Sprintf("n=%d,failing=%d,max=%d%%", tc.n, tc.fail, tc.pct), func(t *testing.T) {
			all := addrs(tc.n)
			b, clk := newTest(t, Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Minute, MaxEjectionPercent: tc.pct}, all...)
			var out []string
			for _, a := range all[:tc.fail] {
				if try(clk, b.endpoint(a), time.Millisecond, true) {
					out = append(out, a)
				}
			}
			level(b)
			want := without(all, out)
			if tc.panic {
				want = all
			}
			checkPicks(t, picks(b, total), want, total)

			clk.Advance(time.Minute) // every ejection ends
			level(b)
			checkPicks(t, picks(b, total), all, total)
		})
	}
}

// TestPanicEndsWithEjections: panic mode ends as soon as enough ejections
// have ended, before the last one does.
func TestPanicEndsWithEjections(t *testing.T) {
	const total = 4000
	b, clk := newTest(t, Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100}, "a", "b", "c", "d")
	for i, a := range []string{"a", "b", "c"} { // out for a minute from 0 s, 10 s, 20 s
		clk.Advance(time.Duration(min(i, 1)) * 10 * time.Second)
		if !try(clk, b.endpoint(a), time.Millisecond, true) {
			t.Fatalf("%s not ejected", a)
		}
	}
	level(b)
	checkPicks(t, picks(b, total), []string{"a", "b", "c", "d"}, total) // 3 of 4 out
	clk.Advance(41 * time.Second)                                       // a is back: 2 of 4 out
	level(b)
	checkPicks(t, picks(b, total), []string{"a", "d"}, total)
}

// TestPanicOnUpdate: an Update that leaves the ejected endpoints in the
// majority starts panic mode, even with the default MaxEjectionPercent,
// and one that adds endpoints ends it.
func TestPanicOnUpdate(t *testing.T) {
	const total = 4000
	b, clk := newTest(t, Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Minute, MaxEjectionPercent: 50}, "a", "b", "c", "d")
	for _, a := range []string{"a", "b"} {
		if !try(clk, b.endpoint(a), time.Millisecond, true) {
			t.Fatalf("%s not ejected", a)
		}
	}
	level(b)
	checkPicks(t, picks(b, total), []string{"c", "d"}, total)

	b.Update([]Target{{Addr: "a"}, {Addr: "b"}, {Addr: "c"}}) // 2 of 3 out
	level(b)
	checkPicks(t, picks(b, total), []string{"a", "b", "c"}, total)

	b.Update([]Target{{Addr: "a"}, {Addr: "b"}, {Addr: "c"}, {Addr: "e"}}) // 2 of 4 out
	level(b)
	checkPicks(t, picks(b, total), []string{"c", "e"}, total)
}

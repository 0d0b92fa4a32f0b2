package balancer

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// TestAvoidTried: a retry avoids every endpoint the request tried, not
// only the previous try's, as Envoy's previous_hosts predicate does;
// when every endpoint of the best eligibility was tried, it avoids only
// the latest (the rule for one avoided endpoint, TestAvoid). Before,
// Pick avoided the previous try's endpoint alone: the third try among
// three endpoints went back to the first half the time.
func TestAvoidTried(t *testing.T) {
	ten := strings.Split("a b c d e f g h i j", " ")
	for _, tc := range []struct {
		name        string
		endpoints   []string
		terminating []string
		eject       []string
		tried       []string // the latest last
		want        []string
	}{
		{name: "three endpoints, two tried: the third", endpoints: []string{"a", "b", "c"}, tried: []string{"a", "b"}, want: []string{"c"}},
		{name: "the order of the tries does not matter", endpoints: []string{"a", "b", "c"}, tried: []string{"b", "a"}, want: []string{"c"}},
		{name: "four endpoints, two tried: the other two", endpoints: []string{"a", "b", "c", "d"}, tried: []string{"c", "a"}, want: []string{"b", "d"}},
		{name: "all tried: any but the latest", endpoints: []string{"a", "b", "c"}, tried: []string{"a", "b", "c"}, want: []string{"a", "b"}},
		{name: "two, both tried: the one before the latest", endpoints: []string{"a", "b"}, tried: []string{"b", "a"}, want: []string{"b"}},
		{name: "tried ready ones before an untried terminating one", endpoints: []string{"a", "b", "c"}, terminating: []string{"c"}, tried: []string{"a", "b"}, want: []string{"a"}},
		{name: "tried ready ones before an untried ejected one", endpoints: []string{"a", "b", "c"}, eject: []string{"c"}, tried: []string{"b", "a"}, want: []string{"b"}},
		{name: "among terminating ones", endpoints: []string{"a", "b", "c", "d"}, terminating: []string{"b", "c", "d"}, eject: []string{"a"}, tried: []string{"b", "c"}, want: []string{"d"}},
		{name: "panic mode", endpoints: []string{"a", "b", "c"}, eject: []string{"a", "b", "c"}, tried: []string{"a", "c"}, want: []string{"b"}},
		{name: "the only endpoint", endpoints: []string{"a"}, tried: []string{"a"}, want: []string{"a"}},
		{name: "the scan path: eight of ten tried", endpoints: ten, tried: ten[:8], want: ten[8:]},
		{name: "the scan path: ten of ten tried", endpoints: ten, tried: ten, want: ten[:9]},
		{name: "a tried endpoint gone from the set", endpoints: []string{"a", "b"}, tried: []string{"gone", "a"}, want: []string{"b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := ejectedSet(t, tc.endpoints, tc.terminating, tc.eject)
			var tried Tried
			for _, a := range tc.tried {
				e := b.endpoint(a)
				if e == nil {
					e = &Endpoint{b: b, addr: a}
				}
				tried.Add(e)
			}
			seen := map[string]bool{}
			for range 2000 {
				seen[b.Pick(tried.Endpoints()...).Addr()] = true
			}
			var got []string
			for a := range seen {
				got = append(got, a)
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("picked %v after tries of %v, want %v", got, tc.tried, tc.want)
			}
		})
	}
}

// TestRetriesNeverRepeat: a request's tries, each recorded in its Tried,
// go to as many distinct endpoints as there are, then take turns. With
// three endpoints the tries of 2,000 requests went a, b, a about half
// the time when only the previous endpoint was avoided.
func TestRetriesNeverRepeat(t *testing.T) {
	for _, n := range []int{2, 3, 5} {
		b, _ := newTest(t, Config{})
		var targets []Target
		for i := range n {
			targets = append(targets, Target{Addr: string(rune('a' + i))})
		}
		b.Update(targets)
		for req := range 2000 {
			var tried Tried
			var got []string
			for range n + 2 {
				e := b.Pick(tried.Endpoints()...)
				tried.Add(e)
				got = append(got, e.Addr())
			}
			if len(slices.Compact(slices.Sorted(slices.Values(got[:n])))) != n {
				t.Fatalf("%d endpoints, request %d: tries went to %v, want the first %d all different", n, req, got, n)
			}
			for i := 1; i < len(got); i++ {
				if n > 1 && got[i] == got[i-1] {
					t.Fatalf("%d endpoints, request %d: tries went to %v, two in a row to %s", n, req, got, got[i])
				}
			}
		}
	}
}

// TestTriedAdd: the endpoints tried, each once, the latest last; past
// MaxTried the oldest is forgotten.
func TestTriedAdd(t *testing.T) {
	b, _ := newTest(t, Config{}, strings.Split("a b c d e f g h i j k l m n", " ")...)
	addrs := func(tr *Tried) string {
		var s []string
		for _, e := range tr.Endpoints() {
			s = append(s, e.Addr())
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct{ add, want string }{
		{"", ""},
		{"a", "a"},
		{"a b c", "a b c"},
		{"a b a", "b a"},
		{"a b c b", "a c b"},
		{"a a", "a"},
		{"a b c d e f g h i j k l", "a b c d e f g h i j k l"},
		{"a b c d e f g h i j k l m", "b c d e f g h i j k l m"},
		{"a b c d e f g h i j k l m n", "c d e f g h i j k l m n"},
		{"a b c d e f g h i j k l a", "b c d e f g h i j k l a"},
	} {
		var tr Tried
		for _, a := range strings.Fields(tc.add) {
			tr.Add(b.endpoint(a))
		}
		if got := addrs(&tr); got != tc.want {
			t.Errorf("Add %q: %q, want %q", tc.add, got, tc.want)
		}
	}
}

// TestTriedNoAllocs: a request's retries, avoiding what it tried,
// allocate nothing, on the fast path and the scan path.
func TestTriedNoAllocs(t *testing.T) {
	b, clk := newTest(t, Config{ConsecutiveFailures: 3, BaseEjectionTime: time.Second, MaxEjectionPercent: 100}, four...)
	if n := testing.AllocsPerRun(10_000, func() {
		var tried Tried
		for range 4 {
			e := b.Pick(tried.Endpoints()...)
			tried.Add(e)
			s := e.Start()
			clk.Advance(time.Millisecond)
			e.Done(s, e.addr == four[0])
		}
	}); n != 0 {
		t.Errorf("a request of four tries: %v allocs per run, want 0", n)
	}
}

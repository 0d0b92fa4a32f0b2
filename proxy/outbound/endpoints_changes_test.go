package outbound

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/balancer"
)

// TestAddrChanges: which addresses an update of every Service's
// endpoints takes out of the pools (removed: in no Service's endpoints
// any more) and which it brings back (new to a Service), case by case.
func TestAddrChanges(t *testing.T) {
	ts := func(addrs ...string) []balancer.Target {
		var out []balancer.Target
		for _, a := range addrs {
			out = append(out, balancer.Target{Addr: a})
		}
		return out
	}
	type set = map[string][]balancer.Target
	for _, tc := range []struct {
		name          string
		old, next     set
		removed, back []string
	}{
		{"unchanged", set{"a": ts("10.0.0.1:80", "10.0.0.2:80")}, set{"a": ts("10.0.0.1:80", "10.0.0.2:80")}, nil, nil},
		{"one pod gone", set{"a": ts("10.0.0.1:80", "10.0.0.2:80")}, set{"a": ts("10.0.0.1:80")}, []string{"10.0.0.2:80"}, nil},
		{"one pod new", set{"a": ts("10.0.0.1:80")}, set{"a": ts("10.0.0.1:80", "10.0.0.3:80")}, nil, []string{"10.0.0.3:80"}},
		{"a Service gone", set{"a": ts("10.0.0.1:80"), "b": ts("10.0.0.2:80")}, set{"a": ts("10.0.0.1:80")}, []string{"10.0.0.2:80"}, nil},
		{"gone from one Service, kept by another", set{"a": ts("10.0.0.1:80"), "b": ts("10.0.0.1:80", "10.0.0.2:80")}, set{"b": ts("10.0.0.1:80", "10.0.0.2:80")}, nil, nil},
		{"moved to another Service", set{"a": ts("10.0.0.1:80")}, set{"b": ts("10.0.0.1:80")}, nil, []string{"10.0.0.1:80"}},
		{"the port matters", set{"a": ts("10.0.0.1:80")}, set{"a": ts("10.0.0.1:8080")}, []string{"10.0.0.1:80"}, []string{"10.0.0.1:8080"}},
		{"IPv4-mapped spelled as IPv4", set{"a": ts("[::ffff:10.0.0.1]:80")}, set{}, []string{"10.0.0.1:80"}, nil},
		{"reordered is unchanged", set{"a": ts("10.0.0.1:80", "10.0.0.2:80")}, set{"a": ts("10.0.0.2:80", "10.0.0.1:80")}, nil, nil},
		{"everything gone", set{"a": ts("10.0.0.1:80"), "b": ts("[fd00::1]:80")}, nil, []string{"10.0.0.1:80", "[fd00::1]:80"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			removed, back := addrChanges(tc.old, tc.next)
			if got := sorted(removed); !slices.Equal(got, tc.removed) {
				t.Errorf("removed %v, want %v", got, tc.removed)
			}
			if got := sorted(back); !slices.Equal(got, tc.back) {
				t.Errorf("back %v, want %v", got, tc.back)
			}
		})
	}
}

func sorted(aps []netip.AddrPort) []string {
	var out []string
	for _, ap := range aps {
		out = append(out, ap.String())
	}
	slices.Sort(out)
	return out
}

// TestRetireGoneFor: a connection dialled to an address that left within
// goneFor of its leaving is retired as it is made (a try that picked it
// as it left), one dialled later is not, nor one after the address came
// back.
func TestRetireGoneFor(t *testing.T) {
	var p connPools
	ap := netip.MustParseAddrPort("10.0.0.1:80")
	now := time.Now()
	if _, n := p.retire([]netip.AddrPort{ap}, nil, now, time.Hour); n != 0 {
		t.Fatalf("retired %d with no connection, want 0", n)
	}
	if c := p.add(nil, ap, poolFast); !c.retired.Load() {
		t.Error("a connection made within goneFor of its address leaving is not retired")
	}
	other := netip.MustParseAddrPort("10.0.0.2:80")
	if c := p.add(nil, other, poolFast); c.retired.Load() {
		t.Error("a connection to another address is retired")
	}
	// Back: new connections are kept again, and the old one's pool swept.
	sweep, _ := p.retire(nil, []netip.AddrPort{ap}, now, time.Hour)
	if !sweep[poolFast] {
		t.Error("the address came back: its retired connection's pool is not swept")
	}
	if c := p.add(nil, ap, poolFast); c.retired.Load() {
		t.Error("a connection made after its address came back is retired")
	}
	// Gone again, but the mark expired: kept.
	p.retire([]netip.AddrPort{ap}, nil, now.Add(-2*time.Hour), time.Hour)
	p.retire(nil, nil, now, time.Hour) // any later update drops expired marks
	if c := p.add(nil, ap, poolFast); c.retired.Load() {
		t.Error("a connection made after the goneFor mark expired is retired")
	}
}

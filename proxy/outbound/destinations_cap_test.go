package outbound

import (
	"strconv"
	"testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestBreakerCapKeptOnReload: past maxServices destinations share one
// service without a breaker, and a reload keeps them there: rebuilt while
// the new map filled, they took breakers of their own, more at each
// reload (4,096 → 6,770 → 8,626 → 9,844 for 12,288 hosts).
func TestBreakerCapKeptOnReload(t *testing.T) {
	table := policy.NewTable(nil, "default")
	d := newDestinations("default", table, telemetry.New(0), func(string, ...any) {})
	for i := range maxServices + 1000 {
		d.get("host-" + strconv.Itoa(i) + ".example:80")
	}
	breakers := func() int {
		n := 0
		for _, e := range *d.byAuthority.Load() {
			if e.dst.breaker != nil {
				n++
			}
		}
		return n
	}
	if got := breakers(); got != maxServices {
		t.Fatalf("%d destinations with a breaker, want the cap %d", got, maxServices)
	}
	for reload := range 3 {
		d.setTable(table)
		if got := breakers(); got != maxServices {
			t.Fatalf("after reload %d: %d destinations with a breaker, want the cap %d", reload+1, got, maxServices)
		}
	}
	if o := d.get("host-" + strconv.Itoa(maxServices+500) + ".example:80"); o.name != overflowName || o.breaker != nil {
		t.Errorf("a destination past the cap is %q with breaker %v after the reloads", o.name, o.breaker != nil)
	}
}

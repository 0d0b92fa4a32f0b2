package admin

import (
	"net/http/httptest"
	"testing"
	"time"
)

func TestProfileSeconds(t *testing.T) {
	for _, tc := range []struct {
		query string
		def   float64
		whole bool
		want  time.Duration
		err   bool
	}{
		{"", 30, true, 30 * time.Second, false},
		{"seconds=10", 30, true, 10 * time.Second, false},
		{"seconds=600", 30, true, 600 * time.Second, false},
		// As net/http/pprof: what is not a positive whole number is the default.
		{"seconds=0", 30, true, 30 * time.Second, false},
		{"seconds=-5", 30, true, 30 * time.Second, false},
		{"seconds=0.5", 30, true, 30 * time.Second, false},
		{"seconds=x", 30, true, 30 * time.Second, false},
		{"seconds=601", 30, true, 0, true},
		{"seconds=100000", 30, true, 0, true},
		// A trace takes fractions.
		{"", 1, false, time.Second, false},
		{"seconds=0.5", 1, false, 500 * time.Millisecond, false},
		{"seconds=NaN", 1, false, time.Second, false},
		{"seconds=-Inf", 1, false, time.Second, false},
		{"seconds=600.5", 1, false, 0, true},
		{"seconds=Inf", 1, false, 0, true},
	} {
		r := httptest.NewRequest("GET", "/debug/pprof/profile?"+tc.query, nil)
		d, err := profileSeconds(r, tc.def, tc.whole)
		if (err != nil) != tc.err || d != tc.want {
			t.Errorf("%q (default %v, whole %v): %v, %v; want %v, error %v", tc.query, tc.def, tc.whole, d, err, tc.want, tc.err)
		}
	}
}

package breaker

import (
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// TestRetire: a retired breaker (a policy reload dropped it, or
// POST /debug/breakers/reset replaced it) counts its move to closed and
// then nothing: not the late outcome of a try it allowed before, not the
// tries a request that took the destination before the swap still sends.
// A half-open probe that failed after the reload counted half-open → open
// on the live series, where the reload had already counted
// half-open → closed.
func TestRetire(t *testing.T) {
	for _, tc := range []struct {
		name string
		// before brings the breaker (consecutiveFailures: 2,
		// openTimeout: 1m) to the state it is retired in and returns the
		// Done of a try still in flight, or nil.
		before func(t *testing.T, b *Breaker) Done
		// late is the outcome of the try in flight, reported after Retire.
		late error
		// after is how many failing tries go to the retired breaker.
		after int
		want  []string // onChange calls, in order
	}{
		{
			name:   "half-open probe fails after",
			before: halfOpenProbe,
			late:   ErrFailed,
			want:   []string{"closed→open", "open→half-open", "half-open→closed"},
		},
		{
			name:   "half-open probe succeeds after",
			before: halfOpenProbe,
			late:   nil,
			want:   []string{"closed→open", "open→half-open", "half-open→closed"},
		},
		{
			name: "open past its timeout",
			before: func(t *testing.T, b *Breaker) Done {
				fail(t, b, 2)
				time.Sleep(time.Minute + time.Second)
				return nil
			},
			want: []string{"closed→open", "open→half-open", "half-open→closed"},
		},
		{
			name: "open, then tries on the retired one",
			before: func(t *testing.T, b *Breaker) Done {
				fail(t, b, 2)
				return nil
			},
			after: 2,
			want:  []string{"closed→open", "open→closed"},
		},
		{
			// One failure counted, the second one pending: it would
			// open the retired breaker.
			name: "closed, failure pending",
			before: func(t *testing.T, b *Breaker) Done {
				fail(t, b, 1)
				d, err := b.Allow()
				if err != nil {
					t.Fatal(err)
				}
				return d
			},
			late: ErrFailed,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var got []string
				b := New("d", cfg(2, 1, time.Minute), func(_ string, from, to State) {
					got = append(got, from.String()+"→"+to.String())
				})
				inFlight := tc.before(t, b)
				b.Retire()
				if st := b.State(); st != Closed {
					t.Fatalf("retired breaker %v, want closed", st)
				}
				if inFlight != nil {
					inFlight(tc.late)
				}
				fail(t, b, tc.after)
				if !slices.Equal(got, tc.want) {
					t.Errorf("transitions %q, want %q", got, tc.want)
				}
				// The late outcome is dropped: even uncounted, a failure
				// that opened the retired breaker would refuse the tries
				// of the requests that took it before the swap.
				if st := b.State(); tc.after == 0 && st != Closed {
					t.Errorf("%v after the late outcome, want closed", st)
				}
			})
		})
	}
}

// halfOpenProbe opens b (consecutiveFailures: 2), waits out its
// openTimeout (1m) and returns the Done of the probe it then allows.
func halfOpenProbe(t *testing.T, b *Breaker) Done {
	fail(t, b, 2)
	time.Sleep(time.Minute + time.Second)
	probe, err := b.Allow()
	if err != nil {
		t.Fatalf("probe refused: %v", err)
	}
	return probe
}

package xdsclient

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

type refuse func(*http.Request) (*http.Response, error)

func (f refuse) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// reconnectWaits runs a client against a control plane that refuses every
// connection, in a bubble whose clock moves only when Run waits, and
// returns the waits between its first n+1 connection attempts.
func reconnectWaits(t *testing.T, n int, lo, hi time.Duration, randN func(int64) int64) []time.Duration {
	t.Helper()
	var waits []time.Duration
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var last time.Time
		hc := &http.Client{Transport: refuse(func(*http.Request) (*http.Response, error) {
			now := time.Now()
			if !last.IsZero() {
				waits = append(waits, now.Sub(last))
			}
			last = now
			if len(waits) == n {
				cancel()
			}
			return nil, errors.New("connection refused")
		})}
		c := &Client{Addr: "controlplane:15010", Node: &NodeInfo{}, HTTPClient: hc,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil)), MinBackoff: lo, MaxBackoff: hi, randN: randN}
		if err := c.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return waits
}

// TestReconnectBackoff: the waits between reconnects follow a nominal
// delay that doubles from 250 ms to the 30 s cap, each drawn within ±20 %
// of it and within 250 ms..30 s (docs/controlplane.md). Before, a wait
// was drawn from half to one and a half times the nominal delay: 125 ms
// to 45 s, under and over the documented bounds.
func TestReconnectBackoff(t *testing.T) {
	ms := time.Millisecond
	s := time.Second
	for _, tt := range []struct {
		name  string
		randN func(int64) int64
		want  []time.Duration
	}{
		{"lowest draws", func(int64) int64 { return 0 },
			[]time.Duration{250 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 6400 * ms, 12800 * ms, 24 * s, 24 * s}},
		{"highest draws", func(n int64) int64 { return n - 1 },
			[]time.Duration{300 * ms, 600 * ms, 1200 * ms, 2400 * ms, 4800 * ms, 9600 * ms, 19200 * ms, 30 * s, 30 * s}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := reconnectWaits(t, len(tt.want), 0, 0, tt.randN) // the defaults
			if len(got) != len(tt.want) {
				t.Fatalf("waits %v; want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("wait %d: %v; want %v (all: %v)", i+1, got[i], tt.want[i], got)
				}
			}
		})
	}
}

// TestReconnectBackoffBounds: with a seeded random source, every wait is
// within the bounds and within ±20 % of its nominal delay, and the waits
// differ (jittered, not all on a bound).
func TestReconnectBackoffBounds(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const lo, hi = 250 * time.Millisecond, 30 * time.Second
	got := reconnectWaits(t, 60, lo, hi, r.Int64N)
	seen := map[time.Duration]bool{}
	nominal := lo
	for i, w := range got {
		if w < lo || w > hi || w < nominal*4/5 || w > nominal*6/5 {
			t.Errorf("wait %d: %v; want within %v..%v and ±20%% of %v", i+1, w, lo, hi, nominal)
		}
		seen[w] = true
		nominal = min(2*nominal, hi)
	}
	if len(seen) < len(got)*9/10 {
		t.Errorf("%d distinct waits of %d: %v", len(seen), len(got), got)
	}
}

// TestJitterNarrowBounds: bounds closer than ±20 % narrow the draw; equal
// bounds give the one wait.
func TestJitterNarrowBounds(t *testing.T) {
	top := func(n int64) int64 { return n - 1 }
	for _, tt := range []struct {
		nominal, lo, hi, want time.Duration
		randN                 func(int64) int64
	}{
		{100 * time.Millisecond, 100 * time.Millisecond, 110 * time.Millisecond, 110 * time.Millisecond, top},
		{110 * time.Millisecond, 100 * time.Millisecond, 110 * time.Millisecond, 100 * time.Millisecond, func(int64) int64 { return 0 }},
		{50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond, top},
	} {
		if got := jitter(tt.nominal, tt.lo, tt.hi, tt.randN); got != tt.want {
			t.Errorf("jitter(%v, %v..%v) = %v; want %v", tt.nominal, tt.lo, tt.hi, got, tt.want)
		}
	}
}

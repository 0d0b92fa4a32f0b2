package leanhttp

import (
	"context"
	"net"
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

// TestWatchdogWakes holds the watchdog to its schedule in fake time: no
// wake-up while no request is in flight, about one per WatchAfter under a
// stream of short requests (the ticker it had woke twice as often), and a
// long request watched within WatchAfter and a quarter, not before.
func TestWatchdogWakes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const after = 100 * time.Millisecond
		s := New(&http.Server{})
		s.WatchAfter = after
		go s.watchdog()
		defer close(s.done)
		a, b := net.Pipe()
		defer b.Close()
		defer a.Close()
		c := s.newConn(context.Background(), a)
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		wakes := func(what string, within time.Duration, most int64, run func()) {
			t.Helper()
			n := s.dogWakes.Load()
			start := time.Now()
			run()
			time.Sleep(within - time.Since(start))
			synctest.Wait()
			if got := s.dogWakes.Load() - n; got > most {
				t.Errorf("%s: %d wake-ups in %v, want at most %d", what, got, within, most)
			}
		}

		wakes("idle", time.Hour, 1, func() {}) // the first, then parked

		for _, tc := range []struct {
			name         string
			every, lasts time.Duration
			most         int64
		}{
			{"1 ms requests every 7 ms", 7 * time.Millisecond, time.Millisecond, int64(10*time.Second/after) + 1},
			{"9 ms requests every 10 ms", 10 * time.Millisecond, 9 * time.Millisecond, int64(10*time.Second/(after-10*time.Millisecond)) + 1},
		} {
			wakes(tc.name, 10*time.Second, tc.most, func() {
				for start := time.Now(); time.Since(start) < 10*time.Second-tc.every; {
					c.arm()
					time.Sleep(tc.lasts)
					c.unwatch()
					time.Sleep(tc.every - tc.lasts)
				}
			})
			if st := c.wstate.Load(); st != wIdle {
				t.Fatalf("%s: state %d after the requests, want idle (none watched)", tc.name, st)
			}
		}

		wakes("idle again", time.Hour, 1, func() {})

		// A long request that begins while the watchdog sleeps for a
		// short one is watched at its own due time, within a quarter.
		a2, b2 := net.Pipe()
		defer b2.Close()
		defer a2.Close()
		long := s.newConn(context.Background(), a2)
		s.mu.Lock()
		s.conns[long] = struct{}{}
		s.mu.Unlock()
		c.arm() // wakes the watchdog: its timer is set for after
		time.Sleep(after * 3 / 10)
		long.arm()
		time.Sleep(time.Millisecond)
		c.unwatch()
		time.Sleep(after - time.Millisecond - time.Millisecond)
		synctest.Wait()
		if st := long.wstate.Load(); st != wReq {
			t.Fatalf("request watched before WatchAfter (state %d)", st)
		}
		time.Sleep(after/4 + time.Millisecond)
		synctest.Wait()
		if st := long.wstate.Load(); st != wWatch {
			t.Fatalf("request not watched within WatchAfter and a quarter (state %d)", st)
		}
		long.unwatch()
	})
}

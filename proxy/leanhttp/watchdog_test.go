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
		newConn := func() *conn {
			a, b := net.Pipe()
			t.Cleanup(func() { a.Close(); b.Close() })
			c := s.newConn(context.Background(), a)
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			return c
		}
		c := newConn()
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
					c.arm(false)
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

		// The request that wakes the watchdog is watched at WatchAfter.
		c.arm(false)
		time.Sleep(after - time.Millisecond)
		synctest.Wait()
		if st := c.wstate.Load(); st != wReq {
			t.Fatalf("request watched before WatchAfter (state %d)", st)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if st := c.wstate.Load(); st != wWatch {
			t.Fatalf("the request that woke the watchdog not watched at WatchAfter (state %d)", st)
		}
		c.unwatch()
		wakes("idle again", time.Hour, 2, func() {})

		// The worst cases are within WatchAfter and a quarter: a request
		// 1 ms short of due at a look, and one that begins 1 ms after a
		// look that found only a watched request in flight.
		long, later := newConn(), newConn()
		// watched checks that c is watched by from now, not before.
		watched := func(c *conn, what string, by time.Duration) {
			t.Helper()
			time.Sleep(by - time.Millisecond)
			synctest.Wait()
			if st := c.wstate.Load(); st != wReq {
				t.Fatalf("%s: watched early (state %d)", what, st)
			}
			time.Sleep(time.Millisecond)
			synctest.Wait()
			if st := c.wstate.Load(); st != wWatch {
				t.Fatalf("%s: not watched within WatchAfter and a quarter of its start (state %d)", what, st)
			}
		}
		c.arm(false) // wakes the watchdog: it looks at WatchAfter from now
		time.Sleep(time.Millisecond)
		long.arm(false) // due 1 ms after that look: watched at the look after, WatchAfter/4 on
		time.Sleep(time.Millisecond)
		c.unwatch()
		watched(long, "a request 1 ms short of due at a look", after+after/4-2*time.Millisecond)
		time.Sleep(time.Millisecond)
		later.arm(false) // 1 ms after the look that watched long
		watched(later, "a request begun 1 ms after a look", after+after/4-time.Millisecond)
		long.unwatch()
		later.unwatch()
	})
}

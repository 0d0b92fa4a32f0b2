package telemetry

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// sleepyWriter takes d of (fake) time per write, as a slow reader does.
type sleepyWriter struct {
	d   time.Duration
	out *syncBuf
}

func (w sleepyWriter) Write(p []byte) (int, error) { time.Sleep(w.d); return w.out.Write(p) }

// TestAccessLogShutdownBounded: Shutdown waits for the last lines' write
// until its context ends, and no longer. Close waited for the writer
// without bound, and a stdout that nobody reads (a full pipe) held the
// sidecar's exit after SIGTERM for good; now the lines that were not
// written count as dropped, and so does a line logged after.
func TestAccessLogShutdownBounded(t *testing.T) {
	const bound = 2 * time.Second
	for _, tc := range []struct {
		name        string
		writeTakes  time.Duration // 0: forever
		wantWritten bool
	}{
		{"output blocked", 0, false},
		{"slow output within the bound", bound / 4, true}, // two writes: the one under way, the last
		{"output fine", time.Nanosecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var out syncBuf
				release := make(chan struct{})
				var w interface{ Write([]byte) (int, error) } = sleepyWriter{tc.writeTakes, &out}
				if tc.writeTakes == 0 {
					w = blockingWriter{release}
				}
				l := NewAccessLog(w)
				e := Entry{Time: time.Now(), RequestID: strings.Repeat("r", 100), Method: "GET", Path: strings.Repeat("/p", 100)}
				// Past flushAt the flusher starts a write, and the lines
				// after it wait in the buffer: both are lost if it blocks.
				const n = 300
				if n*len(e.appendJSON(nil, nil)) <= flushAt || n*len(e.appendJSON(nil, nil)) >= maxBuffered {
					t.Fatal("the test's lines do not pass flushAt, or fill the buffer")
				}
				for range n {
					l.Log(&e)
				}
				synctest.Wait()

				ctx, cancel := context.WithTimeout(context.Background(), bound)
				defer cancel()
				start := time.Now()
				err := l.Shutdown(ctx)
				took := time.Since(start)
				l.Log(&e) // a request that ends after the log closed

				if tc.wantWritten {
					if err != nil || took >= bound {
						t.Errorf("Shutdown = %v after %v, want nil before %v", err, took, bound)
					}
					if got := strings.Count(out.String(), "\n"); got != n {
						t.Errorf("%d lines written, want %d", got, n)
					}
					if l.Dropped() != 1 {
						t.Errorf("Dropped = %d, want 1: the line logged after Shutdown", l.Dropped())
					}
				} else {
					if !errors.Is(err, context.DeadlineExceeded) || took != bound {
						t.Errorf("Shutdown = %v after %v, want the deadline's error at %v", err, took, bound)
					}
					if l.Dropped() != n+1 {
						t.Errorf("Dropped = %d, want %d: the lines of the blocked write, those buffered behind it, and the one logged after", l.Dropped(), n+1)
					}
				}

				// The stuck write returns at last: the flusher ends,
				// writing nothing more.
				close(release)
				synctest.Wait()
				select {
				case <-l.done:
				default:
					t.Error("the flusher did not end after its write returned")
				}
			})
		})
	}
}

// TestAccessLogDroppedMetric: the lines the access log drops are in
// minimesh_access_log_lines_dropped_total, which exists at zero from the
// start. They were counted, but only tests read the count.
func TestAccessLogDroppedMetric(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := New(0)
		dropped := func() (float64, bool) {
			f, _ := scrape(t, m)
			fam := f["minimesh_access_log_lines_dropped_total"]
			if fam == nil || len(fam.series) != 1 {
				return 0, false
			}
			return fam.series[0].value, true
		}
		if v, ok := dropped(); !ok || v != 0 {
			t.Fatalf("before any access log: minimesh_access_log_lines_dropped_total = %v (present %v), want 0", v, ok)
		}

		w := blockingWriter{make(chan struct{})}
		l := NewAccessLog(w)
		m.AccessLogDropped(l.Dropped)
		if v, ok := dropped(); !ok || v != 0 {
			t.Fatalf("with an access log: minimesh_access_log_lines_dropped_total = %v (present %v), want 0", v, ok)
		}
		e := Entry{Time: time.Now(), RequestID: strings.Repeat("r", 100), Method: "GET", Path: strings.Repeat("/p", 100)}
		n := 2 * maxBuffered / len(e.appendJSON(nil, nil)) // twice what the buffer holds
		for range n {
			l.Log(&e)
			synctest.Wait() // the flusher takes its first write, and blocks in it
		}
		if v, _ := dropped(); v == 0 || v != float64(l.Dropped()) {
			t.Errorf("stdout blocked, buffer full: minimesh_access_log_lines_dropped_total = %v, want Dropped() = %d > 0", v, l.Dropped())
		}

		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = l.Shutdown(ctx)
		if v, _ := dropped(); v != float64(n) {
			t.Errorf("after Shutdown: minimesh_access_log_lines_dropped_total = %v, want %d: no line was written", v, n)
		}
		close(w.ch)
		synctest.Wait()
	})
}

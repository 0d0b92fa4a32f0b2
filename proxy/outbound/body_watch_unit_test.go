package outbound

import (
	"io"
	"testing"
	"testing/synctest"
	"time"
)

// The request body watch times only a read that waits for the app: an
// upstream that reads late (flow control, a busy server) or never (the
// empty body of an HTTP/2 GET) is not the app's silence.
func TestBodyWatchTimesOnlyWaitingReads(t *testing.T) {
	const idle = 200 * time.Millisecond
	for _, tc := range []struct {
		name string
		// run drives the body from the transport's side: w is the app.
		run  func(b *countingBody, w *io.PipeWriter)
		want time.Duration // when expire comes, from the watch's start (0: never)
	}{
		{"never read", func(b *countingBody, w *io.PipeWriter) {
			time.Sleep(10 * idle)
		}, 0},
		{"read late, then the app's bytes", func(b *countingBody, w *io.PipeWriter) {
			time.Sleep(3 * idle) // the upstream holds the body back
			go func() { time.Sleep(idle / 2); w.Write([]byte("x")); w.Close() }()
			io.ReadAll(b)
		}, 0},
		{"read waits for a silent app", func(b *countingBody, w *io.PipeWriter) {
			time.Sleep(3 * idle)
			b.Read(make([]byte, 1)) // woken by the test's Close after expire
		}, 3*idle + idle},
		{"bytes, then a gap between reads, then a wait", func(b *countingBody, w *io.PipeWriter) {
			go func() {
				for range 4 {
					time.Sleep(idle / 2)
					w.Write([]byte("x"))
				}
			}()
			p := make([]byte, 1)
			for range 4 {
				b.Read(p)
			}
			time.Sleep(2 * idle) // writing upstream: not counted
			b.Read(p)
		}, 2*idle + 2*idle + idle},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r, w := io.Pipe()
				b := &countingBody{ReadCloser: r}
				start := time.Now()
				var fired time.Duration
				stop := b.watch(idle, func() {
					fired = time.Since(start)
					w.CloseWithError(errBodyTimeout) // as the read deadline wakes the read
				})
				tc.run(b, w)
				time.Sleep(10 * idle)
				stop() // after which expire neither runs nor is to run
				if fired != tc.want {
					t.Errorf("expired at %v after the start, want %v (0: never)", fired, tc.want)
				}
			})
		})
	}
}

// An app-paced stream's idle watch ends it once no byte moved either
// way for the limit, counted from the last byte read or written; bytes
// only note their time, the one timer re-armed for what is left.
func TestStreamIdleWatch(t *testing.T) {
	const idle = time.Second
	for _, tc := range []struct {
		name  string
		marks []time.Duration // when a byte moved, from the start
		want  time.Duration
	}{
		{"quiet from the start", nil, idle},
		{"one byte", []time.Duration{300 * time.Millisecond}, 300*time.Millisecond + idle},
		{"bytes over several limits", []time.Duration{900 * time.Millisecond, 1800 * time.Millisecond, 2500 * time.Millisecond}, 2500*time.Millisecond + idle},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				a := &streamActivity{base: start}
				var fired time.Duration
				stop := startIdleWatch(idle, a, func() { fired = time.Since(start) })
				for _, m := range tc.marks {
					time.Sleep(m - time.Since(start))
					a.mark()
				}
				time.Sleep(10 * idle)
				stop() // after which expire neither runs nor is to run
				if fired != tc.want {
					t.Errorf("ended at %v, want %v", fired, tc.want)
				}
			})
		})
	}
}

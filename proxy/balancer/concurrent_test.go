package balancer

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrent runs Pick, Start and Done (with retries, failures and
// ejections) on many goroutines while others Update, Status and SetConfig,
// on the real clock; the race detector checks the rest. At the end nothing
// is left in flight.
func TestConcurrent(t *testing.T) {
	var ejections atomic.Int64
	b := New(Config{ConsecutiveFailures: 3, BaseEjectionTime: time.Millisecond, MaxEjectionTime: 5 * time.Millisecond, MaxEjectionPercent: 50}, nil)
	b.OnEject = func(string) { ejections.Add(1) }
	targets := func(from, to int) []Target {
		var out []Target
		for i := from; i < to; i++ {
			out = append(out, Target{Addr: fmt.Sprintf("10.0.0.%d:80", i), Terminating: i%5 == 0})
		}
		return out
	}
	b.Update(targets(0, 8))

	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() { // endpoints come and go, half of them stay
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b.Update(targets(i%4, 8+i%4))
			time.Sleep(50 * time.Microsecond)
		}
	})
	bg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, s := range b.Status() {
				if s.InFlight < 0 {
					t.Errorf("%s: %d in flight", s.Addr, s.InFlight)
				}
			}
			_ = b.Len()
			b.SetConfig(Config{ConsecutiveFailures: 2 + rand.IntN(3), BaseEjectionTime: time.Millisecond, MaxEjectionPercent: 50})
		}
	})

	var workers sync.WaitGroup
	for range 2 * runtime.GOMAXPROCS(0) {
		workers.Go(func() {
			for range 5000 {
				var prev *Endpoint
				for try := 0; try < 3; try++ { // a request and its retries
					e := b.Pick(prev)
					if e == nil {
						t.Error("Pick returned nil with endpoints")
						return
					}
					s := e.Start()
					failed := e.Addr() == "10.0.0.7:80" || rand.IntN(10) == 0
					e.Done(s, failed)
					if !failed {
						break
					}
					prev = e
				}
			}
		})
	}
	workers.Wait()
	close(stop)
	bg.Wait()
	for _, s := range b.Status() {
		if s.InFlight != 0 {
			t.Errorf("%s: %d in flight at the end, want 0", s.Addr, s.InFlight)
		}
	}
	t.Logf("%d ejections", ejections.Load())
}

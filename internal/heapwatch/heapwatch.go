// Package heapwatch measures the most heap a piece of code holds, for
// tests that bound memory (an admission, a manifest stream): a figure of
// the test, not of a benchmark, taken by sampling runtime.MemStats.
package heapwatch

import (
	"runtime"
	"sync/atomic"
	"time"
)

// Peak runs f while sampling the heap every millisecond and returns the
// most it held above what it held before f (0 if never more).
func Peak(f func()) uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak atomic.Uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peak.Load() {
				peak.Store(m.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	<-done
	if peak.Load() < base {
		return 0
	}
	return peak.Load() - base
}

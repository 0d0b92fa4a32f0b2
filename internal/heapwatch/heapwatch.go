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
	sample := func(m *runtime.MemStats) {
		runtime.ReadMemStats(m)
		for old := peak.Load(); m.HeapAlloc > old && !peak.CompareAndSwap(old, m.HeapAlloc); old = peak.Load() {
		}
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var m runtime.MemStats
		for {
			sample(&m)
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	f()
	// A short f can end between two samples; what it left on the heap
	// is still there (no GC has run since), so one more sample sees it.
	var m runtime.MemStats
	sample(&m)
	close(stop)
	<-done
	if peak.Load() < base {
		return 0
	}
	return peak.Load() - base
}

package balancer

import (
	"fmt"
	"testing"
)

func benchBalancer(n int) *Balancer {
	b := New(Config{ConsecutiveFailures: 5, MaxEjectionPercent: 50}, nil)
	var targets []Target
	for i := range n {
		targets = append(targets, Target{Addr: fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250)})
	}
	b.Update(targets)
	return b
}

var sizes = []int{3, 10, 100}

// BenchmarkPick is one pick on one goroutine.
func BenchmarkPick(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("endpoints=%d", n), func(b *testing.B) {
			bal := benchBalancer(n)
			b.ReportAllocs()
			for b.Loop() {
				bal.Pick(nil)
			}
		})
	}
}

// BenchmarkPickParallel is picks on every P at once.
func BenchmarkPickParallel(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("endpoints=%d", n), func(b *testing.B) {
			bal := benchBalancer(n)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					bal.Pick(nil)
				}
			})
		})
	}
}

// BenchmarkPickDone is a whole try, Pick + Start + Done, on every P at once:
// the sidecar's hot path. One try in 20 fails.
func BenchmarkPickDone(b *testing.B) { benchTries(b, false) }

// BenchmarkPickAnsweredDone is BenchmarkPickDone for tries with a body
// (Pick + Start + Answered + Done): what the answer's clock read adds.
func BenchmarkPickAnsweredDone(b *testing.B) { benchTries(b, true) }

// benchTries is the two benchmarks' one loop, so that they differ in the
// Answered alone (a branch the CPU predicts every time).
func benchTries(b *testing.B, answered bool) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("endpoints=%d", n), func(b *testing.B) {
			bal := benchBalancer(n)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					e := bal.Pick(nil)
					t := e.Start()
					if answered {
						e.Answered(&t)
					}
					e.Done(t, i%20 == 0)
					i++
				}
			})
		})
	}
}

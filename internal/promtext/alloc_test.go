package promtext

import (
	"sync"
	"testing"
)

// TestHotPathAllocatesNothing: the updates the request path makes on a
// resolved child, and resolving a child that exists, allocate nothing.
func TestHotPathAllocatesNothing(t *testing.T) {
	c := NewCounterVec("c_total", "C.", "a", "b")
	g := NewGaugeVec("g", "G.", "a")
	h := NewHistogramVec("h_seconds", "H.", []float64{.001, .01, .1, 1, 10}, "a", "b")
	cc, gg, hh := c.With("x", "y"), g.With("x"), h.With("x", "y")
	for name, f := range map[string]func(){
		"Counter.Inc":       func() { cc.Inc() },
		"Counter.Add":       func() { cc.Add(1500) },
		"Counter.Add frac":  func() { cc.Add(0.5) },
		"Gauge.Set":         func() { gg.Set(3) },
		"Gauge.Add":         func() { gg.Add(-2) },
		"Histogram.Observe": func() { hh.Observe(0.05) },
		"CounterVec.With":   func() { c.With("x", "y").Inc() },
		"HistogramVec.With": func() { h.With("x", "y").Observe(2) },
		"GaugeVec.With":     func() { g.With("x").Inc() },
	} {
		if a := testing.AllocsPerRun(1000, f); a != 0 {
			t.Errorf("%s: %v allocations", name, a)
		}
	}
}

// TestConcurrentUpdates: updates from many goroutines while scraping add
// up (run with -race).
func TestConcurrentUpdates(t *testing.T) {
	c := NewCounterVec("c_total", "C.", "a")
	h := NewHistogramVec("h", "H.", []float64{1, 2})
	g := NewGaugeVec("g", "G.")
	r := NewRegistry()
	r.MustRegister(c, h, g)
	const n, each = 8, 1000
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				c.With([]string{"x", "y"}[j%2]).Inc()
				h.With().Observe(float64(i % 3))
				g.With().Add(0.5)
				if j%100 == 0 {
					r.AppendText(nil)
				}
			}
		}()
	}
	wg.Wait()
	if got := c.With("x").Value() + c.With("y").Value(); got != n*each {
		t.Errorf("counter %v, want %d", got, n*each)
	}
	if got := g.With().Value(); got != n*each/2 {
		t.Errorf("gauge %v, want %d", got, n*each/2)
	}
	s := h.With().snapshot()
	if s.cumulative[len(s.cumulative)-1] != n*each {
		t.Errorf("histogram count %d, want %d", s.cumulative[len(s.cumulative)-1], n*each)
	}
}

func BenchmarkCounterInc(b *testing.B) {
	c := NewCounterVec("c_total", "C.", "a").With("x")
	b.ReportAllocs()
	for b.Loop() {
		c.Inc()
	}
}

func BenchmarkCounterAdd(b *testing.B) {
	c := NewCounterVec("c_total", "C.", "a").With("x")
	b.ReportAllocs()
	for b.Loop() {
		c.Add(1500)
	}
}

func BenchmarkHistogramObserve(b *testing.B) {
	h := NewHistogramVec("h", "H.", []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}, "a").With("x")
	b.ReportAllocs()
	for b.Loop() {
		h.Observe(0.003)
	}
}

func BenchmarkHistogramObserveParallel(b *testing.B) {
	h := NewHistogramVec("h", "H.", []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}, "a").With("x")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.Observe(0.003)
		}
	})
}

func BenchmarkCounterVecWith(b *testing.B) {
	c := NewCounterVec("c_total", "C.", "direction", "destination", "method", "code")
	c.With("outbound", "geo-service:8000", "GET", "200")
	b.ReportAllocs()
	for b.Loop() {
		c.With("outbound", "geo-service:8000", "GET", "200").Inc()
	}
}

// BenchmarkScrape: a registry the size of a sidecar with 200
// destinations.
func BenchmarkScrape(b *testing.B) {
	r := NewRegistry()
	req := NewCounterVec("r_total", "R.", "direction", "destination", "method", "code")
	dur := NewHistogramVec("d_seconds", "D.", []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}, "direction", "destination")
	r.MustRegister(req, dur, NewGoCollector(), NewProcessCollector())
	for i := range 200 {
		d := string(rune('a'+i%26)) + string(rune('a'+i/26)) + "-service:8000"
		req.With("outbound", d, "GET", "200").Inc()
		req.With("outbound", d, "POST", "503").Inc()
		dur.With("outbound", d).Observe(0.01)
	}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = r.AppendText(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}

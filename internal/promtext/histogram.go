package promtext

import (
	"fmt"
	"math"
	"sort"
	"sync/atomic"
)

// Histogram counts observations in buckets with fixed upper bounds (le,
// inclusive) and keeps their sum. Observe is an atomic add on one bucket
// and a compare-and-swap loop on the sum. The count is the sum of the
// buckets, so a scrape always sees _count equal to the +Inf bucket.
type Histogram struct {
	bounds []float64       // upper bounds, increasing, without +Inf
	counts []atomic.Uint64 // per bucket (not cumulative); the last is +Inf
	sum    atomic.Uint64   // float64 bits
}

// Observe records v. NaN counts in the +Inf bucket and makes the sum NaN,
// as in client_golang.
func (h *Histogram) Observe(v float64) {
	var i int
	if len(h.bounds) < 32 {
		i = len(h.bounds)
		for j, b := range h.bounds {
			if v <= b {
				i = j
				break
			}
		}
	} else {
		i = sort.SearchFloat64s(h.bounds, v)
	}
	h.counts[i].Add(1)
	addFloat(&h.sum, v)
}

// snapshot reads the cumulative bucket counts and the sum.
func (h *Histogram) snapshot() histogramSample {
	s := histogramSample{bounds: h.bounds, cumulative: make([]uint64, len(h.counts))}
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
		s.cumulative[i] = n
	}
	s.sum = math.Float64frombits(h.sum.Load())
	return s
}

// HistogramVec is a histogram family with fixed label names and buckets.
type HistogramVec struct{ v *vec[*Histogram] }

// NewHistogramVec makes a histogram family with the given bucket upper
// bounds (strictly increasing; a last +Inf is implied and may be left out).
func NewHistogramVec(name, help string, buckets []float64, labels ...string) *HistogramVec {
	bounds := append([]float64(nil), buckets...)
	if n := len(bounds); n > 0 && math.IsInf(bounds[n-1], +1) {
		bounds = bounds[:n-1]
	}
	for i, b := range bounds {
		if math.IsNaN(b) || (i > 0 && b <= bounds[i-1]) {
			panic(fmt.Sprintf("promtext: %s: buckets must be strictly increasing: %v", name, buckets))
		}
	}
	d := newDesc(name, help, typeHistogram, labels)
	return &HistogramVec{newVec(d, func() *Histogram {
		return &Histogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
	})}
}

// With returns the histogram of the label values, made empty on first use.
func (v *HistogramVec) With(values ...string) *Histogram { return v.v.with(values) }

// Len is the number of series.
func (v *HistogramVec) Len() int { return v.v.Len() }

func (v *HistogramVec) descs() []*desc { return []*desc{v.v.d} }

func (v *HistogramVec) collect(emit emitFunc) {
	v.v.each(func(values []string, h *Histogram) { emit(v.v.d, values, h.snapshot()) })
}

package promtext

import (
	"math"
	"sync/atomic"
)

// Counter is a value that only goes up. Inc, and Add of a whole number,
// are one atomic add; Add of a fraction is a compare-and-swap loop on the
// fractional part.
type Counter struct {
	whole atomic.Uint64 // the sum of whole-number increments
	frac  atomic.Uint64 // float64 bits: the sum of the other increments
}

// Inc adds 1.
func (c *Counter) Inc() { c.whole.Add(1) }

// Add adds v, which must not be negative.
func (c *Counter) Add(v float64) {
	if v < 0 {
		panic("promtext: counter cannot decrease")
	}
	if v < 1<<64 && v == math.Trunc(v) {
		c.whole.Add(uint64(v))
		return
	}
	addFloat(&c.frac, v)
}

// Value is the counter's current value.
func (c *Counter) Value() float64 {
	return float64(c.whole.Load()) + math.Float64frombits(c.frac.Load())
}

// addFloat adds v to the float64 whose bits are in u.
func addFloat(u *atomic.Uint64, v float64) {
	for {
		old := u.Load()
		if u.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// CounterVec is a counter family with fixed label names.
type CounterVec struct{ v *vec[*Counter] }

// NewCounterVec makes a counter family; with no label names it has one
// series once With() is called.
func NewCounterVec(name, help string, labels ...string) *CounterVec {
	return &CounterVec{newVec(newDesc(name, help, typeCounter, labels), func() *Counter { return new(Counter) })}
}

// With returns the counter of the label values (one per label name, in
// their order), making it at 0 on first use.
func (v *CounterVec) With(values ...string) *Counter { return v.v.with(values) }

// Len is the number of series.
func (v *CounterVec) Len() int { return v.v.Len() }

func (v *CounterVec) descs() []*desc { return []*desc{v.v.d} }

func (v *CounterVec) collect(emit emitFunc) {
	v.v.each(func(values []string, c *Counter) { emit(v.v.d, values, scalar(c.Value())) })
}

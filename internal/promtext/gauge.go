package promtext

import (
	"math"
	"sync/atomic"
)

// Gauge is a value that goes up and down: Set is an atomic store, Add a
// compare-and-swap loop.
type Gauge struct{ bits atomic.Uint64 }

// Set sets the gauge to v.
func (g *Gauge) Set(v float64) { g.bits.Store(math.Float64bits(v)) }

// Add adds v (which may be negative).
func (g *Gauge) Add(v float64) { addFloat(&g.bits, v) }

// Inc adds 1.
func (g *Gauge) Inc() { g.Add(1) }

// Dec subtracts 1.
func (g *Gauge) Dec() { g.Add(-1) }

// Value is the gauge's current value.
func (g *Gauge) Value() float64 { return math.Float64frombits(g.bits.Load()) }

// GaugeVec is a gauge family with fixed label names.
type GaugeVec struct{ v *vec[*Gauge] }

// NewGaugeVec makes a gauge family.
func NewGaugeVec(name, help string, labels ...string) *GaugeVec {
	return &GaugeVec{newVec(newDesc(name, help, typeGauge, labels), func() *Gauge { return new(Gauge) })}
}

// With returns the gauge of the label values, made at 0 on first use.
func (v *GaugeVec) With(values ...string) *Gauge { return v.v.with(values) }

// Len is the number of series.
func (v *GaugeVec) Len() int { return v.v.Len() }

func (v *GaugeVec) descs() []*desc { return []*desc{v.v.d} }

func (v *GaugeVec) collect(emit emitFunc) {
	v.v.each(func(values []string, g *Gauge) { emit(v.v.d, values, scalar(g.Value())) })
}

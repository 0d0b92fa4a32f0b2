package promtext

import (
	"slices"
	"strings"
	"sync/atomic"
	"unicode/utf8"
)

// FuncVec is a gauge or counter family whose series are read from
// functions at scrape time: a value kept elsewhere (a listener's open
// connections) costs no metric update.
type FuncVec struct{ v *vec[*funcValue] }

type funcValue struct {
	f atomic.Pointer[func() float64]
}

// NewGaugeFuncVec makes a gauge family of functions.
func NewGaugeFuncVec(name, help string, labels ...string) *FuncVec {
	return &FuncVec{newVec(newDesc(name, help, typeGauge, labels), func() *funcValue { return new(funcValue) })}
}

// NewCounterFuncVec makes a counter family of functions, which must not
// go down.
func NewCounterFuncVec(name, help string, labels ...string) *FuncVec {
	return &FuncVec{newVec(newDesc(name, help, typeCounter, labels), func() *funcValue { return new(funcValue) })}
}

// NewGaugeFunc makes a gauge with no labels read from f.
func NewGaugeFunc(name, help string, f func() float64) *FuncVec {
	v := NewGaugeFuncVec(name, help)
	v.Set(f)
	return v
}

// NewCounterFunc makes a counter with no labels read from f.
func NewCounterFunc(name, help string, f func() float64) *FuncVec {
	v := NewCounterFuncVec(name, help)
	v.Set(f)
	return v
}

// Set makes f the function of the series of the label values, replacing
// the one it had.
func (v *FuncVec) Set(f func() float64, values ...string) { v.v.with(values).f.Store(&f) }

// Len is the number of series.
func (v *FuncVec) Len() int { return v.v.Len() }

func (v *FuncVec) descs() []*desc { return []*desc{v.v.d} }

func (v *FuncVec) collect(emit emitFunc) {
	v.v.each(func(values []string, fv *funcValue) {
		if f := fv.f.Load(); f != nil {
			emit(v.v.d, values, scalar((*f)()))
		}
	})
}

// Emit adds one series to the scrape under way: its value and its label
// values, one per label name in their order. A collect function must not
// emit the same label values twice.
type Emit func(value float64, labelValues ...string)

// collectFunc is a family whose series are whatever its function emits at
// scrape time (breaker states, endpoint counts).
type collectFunc struct {
	d *desc
	f func(emit func(s sample, values []string))
}

func (c *collectFunc) descs() []*desc { return []*desc{c.d} }

func (c *collectFunc) collect(emit emitFunc) {
	c.f(func(s sample, values []string) {
		c.d.checkValues(values)
		emit(c.d, cleanValues(values), s)
	})
}

// NewGaugeCollectFunc makes a gauge family whose series are those collect
// emits at each scrape.
func NewGaugeCollectFunc(name, help string, labels []string, collect func(Emit)) Collector {
	return newScalarCollectFunc(newDesc(name, help, typeGauge, labels), collect)
}

// NewCounterCollectFunc makes a counter family whose series are those
// collect emits at each scrape.
func NewCounterCollectFunc(name, help string, labels []string, collect func(Emit)) Collector {
	return newScalarCollectFunc(newDesc(name, help, typeCounter, labels), collect)
}

func newScalarCollectFunc(d *desc, collect func(Emit)) Collector {
	return &collectFunc{d, func(emit func(sample, []string)) {
		collect(func(v float64, values ...string) { emit(scalar(v), values) })
	}}
}

// Summary is a summary's value: its count, sum and quantiles (client_golang's
// go_gc_duration_seconds is one).
type Summary struct {
	Count     uint64
	Sum       float64
	Quantiles []Quantile
}

// Quantile is the value at one quantile (0 to 1) of a summary.
type Quantile struct{ Quantile, Value float64 }

// NewSummaryCollectFunc makes a summary family whose series are those
// collect emits at each scrape.
func NewSummaryCollectFunc(name, help string, labels []string, collect func(emit func(s Summary, labelValues ...string))) Collector {
	return &collectFunc{newDesc(name, help, typeSummary, labels), func(emit func(sample, []string)) {
		collect(func(s Summary, values ...string) { emit(s, values) })
	}}
}

func (s Summary) appendText(b []byte, d *desc, values []string) []byte {
	qs := slices.Clone(s.Quantiles)
	slices.SortFunc(qs, func(a, b Quantile) int {
		switch {
		case a.Quantile < b.Quantile:
			return -1
		case a.Quantile > b.Quantile:
			return 1
		}
		return 0
	})
	for _, q := range qs {
		b = appendLine(b, d, "", values, "quantile", q.Quantile, q.Value)
	}
	b = appendLine(b, d, "_sum", values, "", 0, s.Sum)
	return appendLine(b, d, "_count", values, "", 0, float64(s.Count))
}

// cleanValues copies values (the caller may reuse its slice), with bytes
// that are not UTF-8 replaced by U+FFFD.
func cleanValues(values []string) []string {
	out := slices.Clone(values)
	for i, s := range out {
		if !utf8.ValidString(s) {
			out[i] = strings.ToValidUTF8(s, "\uFFFD")
		}
	}
	return out
}

package promtext

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Collector is what a Registry serves: one or more metric families. The
// types of this package are the only collectors.
type Collector interface {
	descs() []*desc
	collect(emit emitFunc)
}

// emitFunc hands one series of family d to the scrape under way.
type emitFunc func(d *desc, values []string, s sample)

// Registry holds collectors and writes their families in the text format.
type Registry struct {
	mu    sync.Mutex // serialises registration
	state atomic.Pointer[registryState]

	handlerOnce sync.Once
	handlerErrs *CounterVec

	bufs sync.Pool // *[]byte of past scrapes
}

// registryState is what a scrape reads: replaced, never changed, by each
// registration.
type registryState struct {
	collectors []Collector
	families   []*desc // sorted by name
	index      map[*desc]int
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	r := &Registry{}
	r.state.Store(&registryState{index: map[*desc]int{}})
	return r
}

// MustRegister adds collectors; it panics if a family name is taken.
func (r *Registry) MustRegister(cs ...Collector) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.state.Load()
	s := &registryState{collectors: slices.Clone(old.collectors), families: slices.Clone(old.families), index: map[*desc]int{}}
	names := map[string]bool{}
	for _, d := range s.families {
		names[d.name] = true
	}
	for _, c := range cs {
		for _, d := range c.descs() {
			if names[d.name] {
				panic(fmt.Sprintf("promtext: %s registered twice", d.name))
			}
			names[d.name] = true
			s.families = append(s.families, d)
		}
		s.collectors = append(s.collectors, c)
	}
	slices.SortFunc(s.families, func(a, b *desc) int { return strings.Compare(a.name, b.name) })
	for i, d := range s.families {
		s.index[d] = i
	}
	r.state.Store(s)
}

type series struct {
	values []string
	s      sample
}

// AppendText appends every family with at least one series, sorted by
// name, each one's series sorted by their label values.
func (r *Registry) AppendText(b []byte) []byte {
	st := r.state.Load()
	per := make([][]series, len(st.families))
	for _, c := range st.collectors {
		c.collect(func(d *desc, values []string, s sample) {
			i, ok := st.index[d]
			if !ok {
				panic(fmt.Sprintf("promtext: %s collected but not registered", d.name))
			}
			per[i] = append(per[i], series{values, s})
		})
	}
	for i, d := range st.families {
		list := per[i]
		if len(list) == 0 {
			continue
		}
		slices.SortFunc(list, func(a, b series) int { return d.less(a.values, b.values) })
		b = appendHeader(b, d)
		for _, s := range list {
			b = s.s.appendText(b, d, s.values)
		}
	}
	return b
}

// WriteText writes what AppendText appends.
func (r *Registry) WriteText(w io.Writer) error {
	bp := r.buf()
	defer r.bufs.Put(bp)
	*bp = r.AppendText((*bp)[:0])
	_, err := w.Write(*bp)
	return err
}

func (r *Registry) buf() *[]byte {
	if bp, ok := r.bufs.Get().(*[]byte); ok {
		return bp
	}
	b := make([]byte, 0, 16<<10)
	return &b
}

package promtext

import (
	"slices"
	"strings"
	"sync"
	"unicode/utf8"
)

// vec holds the children of a family with label names, one per distinct
// tuple of label values. Children are found by a hash of their values,
// so that looking one up allocates nothing; they are never deleted.
type vec[M any] struct {
	d    *desc
	make func() M

	mu       sync.RWMutex
	children map[uint64][]*child[M]
	n        int
}

type child[M any] struct {
	values []string
	m      M
}

func newVec[M any](d *desc, make func() M) *vec[M] {
	return &vec[M]{d: d, make: make, children: map[uint64][]*child[M]{}}
}

// with returns the child of values, making it on first use. Label values
// that are not valid UTF-8 have their bad bytes replaced by U+FFFD (a
// scrape with invalid UTF-8 would be rejected whole).
func (v *vec[M]) with(values []string) M {
	v.d.checkValues(values)
	for i, s := range values {
		if !utf8.ValidString(s) {
			values = slices.Clone(values)
			for j := i; j < len(values); j++ {
				values[j] = strings.ToValidUTF8(values[j], "\uFFFD")
			}
			break
		}
	}
	h := hashValues(values)
	v.mu.RLock()
	c := find(v.children[h], values)
	v.mu.RUnlock()
	if c != nil {
		return c.m
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if c := find(v.children[h], values); c != nil {
		return c.m
	}
	c = &child[M]{values: slices.Clone(values), m: v.make()}
	v.children[h] = append(v.children[h], c)
	v.n++
	return c.m
}

// Len is the number of children.
func (v *vec[M]) Len() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.n
}

// each calls f with every child, outside the lock.
func (v *vec[M]) each(f func(values []string, m M)) {
	v.mu.RLock()
	list := make([]*child[M], 0, v.n)
	for _, cs := range v.children {
		list = append(list, cs...)
	}
	v.mu.RUnlock()
	for _, c := range list {
		f(c.values, c.m)
	}
}

func find[M any](cs []*child[M], values []string) *child[M] {
	for _, c := range cs {
		if slices.Equal(c.values, values) {
			return c
		}
	}
	return nil
}

// hashValues is FNV-1a over the values, each followed by 0xff (a byte no
// UTF-8 string holds), so that ("a", "b") and ("ab", "") differ.
func hashValues(values []string) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for _, s := range values {
		for i := 0; i < len(s); i++ {
			h ^= uint64(s[i])
			h *= prime
		}
		h ^= 0xff
		h *= prime
	}
	return h
}

// Package inflight counts work in flight for a drain to wait for.
//
// Unlike a sync.WaitGroup's, the count may rise while the drain waits: a
// connection accepted as its listener closes is counted and waited for,
// where a WaitGroup forbids an Add from zero concurrent with Wait.
package inflight

import "sync"

// Counter counts work in flight. Its zero value counts none.
type Counter struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed when n falls to 0, while someone waits
}

// Add counts one more.
func (c *Counter) Add() {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
}

// Done counts one less.
func (c *Counter) Done() {
	c.mu.Lock()
	if c.n--; c.n == 0 && c.zero != nil {
		close(c.zero)
		c.zero = nil
	}
	c.mu.Unlock()
}

// Idle returns a channel closed once none is in flight: at once if none
// is now.
func (c *Counter) Idle() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	if c.zero == nil {
		c.zero = make(chan struct{})
	}
	return c.zero
}

package leanhttp

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// reqCtx is a request's context, cancelled as net/http's is (its client
// went away, or its handler returned), lent to request after request
// (conn.begin) while none of them waits on it.
//
// context.WithCancel per request was two of the loop's allocations, and
// the request's copy that carries it (Request.WithContext) a third; a
// handler that only reads its context's values and Err (outbound's fast
// path) never needs the channel or the children's map a cancelCtx keeps.
// So the channel comes with the first call of Done, from a real
// context.WithCancel made then, to which Value hands its children (they
// find it as their parent's cancelCtx, as they would under net/http: no
// goroutine each). A context whose Done was called may be waited on
// after its handler returned (a transport's goroutine, an AfterFunc):
// it is never lent again (reuse refuses it).
//
// Only for a connection whose own context is never cancelled (Done nil,
// net/http's base): its requests' end only with their own cancel.
type reqCtx struct {
	// parent is the request's connection's context; set by reuse, and
	// read by Done, under mu.
	parent   context.Context
	canceled atomic.Bool
	mu       sync.Mutex
	std      atomic.Pointer[stdCtx]
	cancelFn func() // c.cancel, made once (getLent)
}

// stdCtx is the context.WithCancel a request's Done made.
type stdCtx struct {
	context.Context
	cancel context.CancelFunc
}

func (c *reqCtx) Deadline() (time.Time, bool) { return c.parent.Deadline() }

func (c *reqCtx) Done() <-chan struct{} {
	if s := c.std.Load(); s != nil {
		return s.Done()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.std.Load()
	if s == nil {
		ctx, cancel := context.WithCancel(c.parent)
		s = &stdCtx{ctx, cancel}
		c.std.Store(s)
		// After the store: a cancel that set canceled before it saw no
		// std to cancel (see cancel).
		if c.canceled.Load() {
			cancel()
		}
	}
	return s.Done()
}

// Err is Canceled once the request was: std's, once Done made it, so
// that Err is nil until Done is closed.
func (c *reqCtx) Err() error {
	if s := c.std.Load(); s != nil {
		return s.Err()
	}
	if c.canceled.Load() {
		return context.Canceled
	}
	return nil
}

// Value is std's once Done made it, so that a child finds it as its
// parent's cancelCtx.
func (c *reqCtx) Value(key any) any {
	if s := c.std.Load(); s != nil {
		return s.Value(key)
	}
	return c.parent.Value(key)
}

func (c *reqCtx) String() string { return "leanhttp.requestContext" }

// cancel ends the request's context. Lock-free against Done: one of the
// two sees the other's store, so std is cancelled (once or twice: a
// CancelFunc may be called again).
func (c *reqCtx) cancel() {
	c.canceled.Store(true)
	if s := c.std.Load(); s != nil {
		s.cancel()
	}
}

// waited reports whether the context's Done was asked for: it may be
// waited on past its request, and is not lent again.
func (c *reqCtx) waited() bool { return c.std.Load() != nil }

// reuse readies the context for a request of the connection whose
// context is parent, and reports whether it did: not for a context whose
// Done was asked for, even by a late caller just before (under mu, so
// that no Done comes in between).
func (c *reqCtx) reuse(parent context.Context) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.std.Load() != nil {
		return false
	}
	c.parent = parent
	c.canceled.Store(false)
	return true
}

// release lets go of the connection's context as the request ends (a
// late Done gets one of its own).
func (c *reqCtx) release() {
	c.mu.Lock()
	c.parent = context.Background()
	c.mu.Unlock()
}

package replayguard

import (
	"context"
	"net"
	"net/http/httptrace"
	"testing"
)

// TestWrote: once the transport is done (its last try's dial failed,
// say), Wrote says whether any try reached the peer: the last one, or
// one before it that was followed by another (allow 1), but never tries
// that wrote nothing; a connection that counts nothing counts as
// written, as it does for the guard.
func TestWrote(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tries []int // bytes each try writes; -1: on a connection that counts nothing
		want  bool
	}{
		{"no try got a connection", nil, false},
		{"one try, nothing written", []int{0}, false},
		{"stale ones only", []int{0, 0, 0}, false},
		{"the last try wrote", []int{0, 7}, true},
		{"a try wrote, then a stale one", []int{7, 0}, true},
		{"a connection that counts nothing", []int{-1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var g Guard
			ctx, cancel := g.Watch(context.Background(), nil, 1, errStop)
			defer cancel(nil)
			gotConn := httptrace.ContextClientTrace(ctx).GotConn
			for _, n := range tc.tries {
				var c net.Conn = Count(&fakeConn{})
				if n < 0 {
					c = &opaque{}
				}
				gotConn(httptrace.GotConnInfo{Conn: c, Reused: true})
				if n > 0 {
					_, _ = c.Write(make([]byte, n))
				}
			}
			if got := g.Wrote(); got != tc.want {
				t.Errorf("Wrote() = %v, want %v", got, tc.want)
			}
		})
	}
}

package replayguard

import (
	"context"
	"errors"
	"net"
	"net/http/httptrace"
	"testing"
)

// fakeConn takes every write whole and records its close.
type fakeConn struct {
	net.Conn
	closed bool
}

func (c *fakeConn) Write(p []byte) (int, error) { return len(p), nil }
func (c *fakeConn) Close() error                { c.closed = true; return nil }

// opaque is a connection that counts nothing (a TLS layer, a dialer
// that does not wrap).
type opaque struct{ fakeConn }

var errStop = errors.New("stop")

// TestGuard: the try after the allow+1st try that wrote is refused (its
// connection closed before any write, the context ended with the cause
// given); tries that wrote nothing never count, however many; a
// connection that counts nothing counts as written.
func TestGuard(t *testing.T) {
	for _, tc := range []struct {
		name  string
		allow int
		tries []int // bytes each try writes; -1: on a connection that counts nothing
		// refused is the try refused (1 for the first), 0 none.
		refused int
	}{
		{"allow 0: nothing written, again and again", 0, []int{0, 0, 0, 0, 7}, 0},
		{"allow 0: a try after one that wrote", 0, []int{7, 0}, 2},
		{"allow 0: stale ones, then one that wrote", 0, []int{0, 0, 7, 0}, 4},
		{"allow 1: one replay", 1, []int{7, 7}, 0},
		{"allow 1: a second replay", 1, []int{7, 7, 0}, 3},
		{"allow 1: stale ones around the writes", 1, []int{0, 0, 7, 0, 0, 7, 0}, 7},
		{"allow 1: stale ones after a write", 1, []int{7, 0, 0, 0, 7}, 0},
		{"allow 1: connections that count nothing", 1, []int{-1, -1, 0}, 3},
		{"allow 0: one that counts nothing", 0, []int{-1, 0}, 2},
		{"allow 0: the first try alone", 0, []int{7}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var g Guard
			ctx, cancel := g.Watch(context.Background(), nil, tc.allow, errStop)
			defer cancel(nil)
			gotConn := httptrace.ContextClientTrace(ctx).GotConn
			refused := 0
			for i, n := range tc.tries {
				f := &fakeConn{}
				var c net.Conn = Count(f)
				if n < 0 {
					o := &opaque{}
					f, c = &o.fakeConn, o
				}
				gotConn(httptrace.GotConnInfo{Conn: c, Reused: true})
				if f.closed {
					refused = i + 1
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("try %d: context ended with its connection open", i+1)
				}
				if n > 0 {
					_, _ = c.Write(make([]byte, n))
				}
			}
			if refused != tc.refused {
				t.Errorf("try %d refused, want %d (0: none)", refused, tc.refused)
			}
			if cause := context.Cause(ctx); (tc.refused > 0) != (cause == errStop) {
				t.Errorf("context cause %v, refused %v", cause, tc.refused > 0)
			}
		})
	}
}

// TestWatchKeepsCancel: a caller's cancel (a try's own, with its
// timeout) is the one the guard ends the request with.
func TestWatchKeepsCancel(t *testing.T) {
	parent, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	var g Guard
	ctx, got := g.Watch(parent, cancel, 0, errStop)
	gotConn := httptrace.ContextClientTrace(ctx).GotConn
	c := Count(&fakeConn{})
	gotConn(httptrace.GotConnInfo{Conn: c})
	_, _ = c.Write([]byte("GET"))
	gotConn(httptrace.GotConnInfo{Conn: Count(&fakeConn{})})
	if context.Cause(parent) != errStop {
		t.Errorf("the caller's context: cause %v, want errStop", context.Cause(parent))
	}
	got(nil) // the caller's, already called: no effect
}

// TestConnPassesOn: what an upgrade's relay finds under a Conn (the
// connection's half-close, raw I/O through Unwrap) is the connection's.
func TestConnPassesOn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c := Count(tc)
	if c.Unwrap() != tc {
		t.Error("Unwrap is not the connection")
	}
	if n, err := c.Write([]byte("abc")); n != 3 || err != nil || c.written.Load() != 3 {
		t.Errorf("Write: %d, %v; counted %d", n, err, c.written.Load())
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8)
	n, _ := peer.Read(b)
	if _, err := peer.Read(b[n:]); string(b[:n]) != "abc" || err == nil {
		t.Errorf("peer read %q then %v, want abc then the half-close's EOF", b[:n], err)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("a write after CloseWrite went through: the connection was not half-closed")
	}
}

package netconn

import (
	"net"
	"testing"
)

// layer is a wrapper as the sidecar's are: it embeds the connection
// under it and gives it back through Unwrap.
type layer struct{ net.Conn }

func (l *layer) Unwrap() net.Conn { return l.Conn }

// opaque wraps without Unwrap: a walk stops at it.
type opaque struct{ net.Conn }

// halfCloser records its half-close.
type halfCloser struct {
	net.Conn
	halfClosed, closed bool
}

func (h *halfCloser) CloseWrite() error { h.halfClosed = true; return nil }
func (h *halfCloser) Close() error      { h.closed = true; return nil }

// closer records its close and has no half-close.
type closer struct {
	net.Conn
	closed bool
}

func (c *closer) Close() error { c.closed = true; return nil }

func TestFind(t *testing.T) {
	h := &halfCloser{}
	inner := &layer{h}
	outer := &layer{inner}
	for _, tc := range []struct {
		name string
		c    net.Conn
		want net.Conn // nil: not found
	}{
		{"itself", h, h},
		{"two layers down", outer, h},
		{"stops at a wrapper without Unwrap", &layer{&opaque{h}}, nil},
		{"nil", nil, nil},
	} {
		got, ok := Find[*halfCloser](tc.c)
		if ok != (tc.want != nil) || (ok && net.Conn(got) != tc.want) {
			t.Errorf("%s: Find = %v, %v; want %v", tc.name, got, ok, tc.want)
		}
	}
	// An interface type finds the outermost that has the methods.
	if got, ok := Find[interface{ Unwrap() net.Conn }](outer); !ok || any(got) != any(outer) {
		t.Errorf("Find[Unwrap](outer) = %v, %v; want outer", got, ok)
	}
	if got, ok := Find[*layer](&opaque{inner}); ok {
		t.Errorf("Find through an opaque wrapper = %v, want none", got)
	}
}

func TestCloseWrite(t *testing.T) {
	h := &halfCloser{}
	if err := CloseWrite(&layer{&layer{h}}); err != nil || !h.halfClosed || h.closed {
		t.Errorf("under two layers: err %v, half-closed %v, closed %v; want a half-close", err, h.halfClosed, h.closed)
	}
	c := &closer{}
	if err := CloseWrite(&layer{c}); err != nil || !c.closed {
		t.Errorf("no half-close under it: err %v, closed %v; want the close of the connection passed", err, c.closed)
	}
}

// BenchmarkFind is the walk the hot path pays for: a concrete type two
// layers down, as rawio.Exchange finds its raw connection.
func BenchmarkFind(b *testing.B) {
	c := net.Conn(&layer{&layer{&halfCloser{}}})
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := Find[*halfCloser](c); !ok {
			b.Fatal("not found")
		}
	}
}

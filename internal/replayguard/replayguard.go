// Package replayguard bounds how often net/http's Transport writes one
// request again. When a kept HTTP/1 connection fails before the answer,
// the transport sends the request again on the next kept connection, with
// no bound on the count: if nothing was written (always safe), or if the
// request is replayable (a bodiless GET, HEAD, OPTIONS, TRACE, or one
// with an Idempotency-Key) however much was written. An upstream or app
// that crashes on a request then ran it once per kept connection.
//
// A Guard judges each try by the bytes it wrote on its connection (a
// Conn, which counts them): a try that wrote nothing never reached the
// peer and never counts, so stale kept connections, however many in a
// row, are passed over as the transport does; a try that wrote may be
// followed by another only Allow times. The inbound path allows none
// (docs/interception.md, "No resilience policy inbound"), the outbound
// path's Go transport one, the keep-alive race (docs/operations.md,
// "Limits and failure behaviour").
package replayguard

import (
	"context"
	"net"
	"net/http/httptrace"
	"sync/atomic"

	"github.com/minimesh/minimesh/internal/netconn"
	"github.com/minimesh/minimesh/internal/rawio"
)

// Conn is a connection that counts the bytes written on it: whether a
// try's request reached the peer. Its transport's dialer returns one.
type Conn struct {
	net.Conn
	written atomic.Int64
}

// Count wraps c so that a Guard can tell the tries that wrote on it.
func Count(c net.Conn) *Conn { return &Conn{Conn: c} }

func (c *Conn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// Unwrap, CloseWrite and ReadLazy give an upgrade's relay the
// connection's own (a reset, a half-close, reads without a buffer held).
func (c *Conn) Unwrap() net.Conn  { return c.Conn }
func (c *Conn) CloseWrite() error { return netconn.CloseWrite(c.Conn) }
func (c *Conn) ReadLazy(bufs rawio.Buffers) ([]byte, int, error) {
	return rawio.ReadLazy(c.Conn, bufs)
}

// Guard watches the tries of one request (or one try of the caller's
// retry loop) through the transport's GotConn. It may be kept in a
// request's state and reused after Watch sets it afresh.
//
// Each try gets its connection through GotConn, on the request's
// goroutine, before the try writes a byte (the transport's write loop
// takes the request after it). The guard notes the connection and its
// write count; at the next try's GotConn, a count that moved means the
// earlier try reached the peer. Once more such tries than Allow would be
// followed by another, the guard closes the connection just handed over,
// so that the write fails whatever the transport does next (cancelling
// the context alone races the write), and cancels the context with Err,
// which ends the transport's loop of tries before it takes yet another
// connection. A write that fails on a closed connection has written
// nothing, so nothing more reaches the peer; the closed connection is
// one the transport would have used for a request that fails anyway.
type Guard struct {
	trace  httptrace.ClientTrace
	cancel context.CancelCauseFunc
	err    error
	allow  int
	wrote  int   // tries that wrote, each followed by another
	tries  int   // tries that got a connection
	last   *Conn // the last try's connection; nil: one that counts nothing
	mark   int64 // last.written when that try got it
}

// Watch returns ctx watched by g, with cancel (made if nil, from ctx),
// which the caller must call when the request is done. allow is how many
// tries that wrote may be followed by another; err is the cause the
// request's context ends with when one more would go.
func (g *Guard) Watch(ctx context.Context, cancel context.CancelCauseFunc, allow int, err error) (context.Context, context.CancelCauseFunc) {
	if cancel == nil {
		ctx, cancel = context.WithCancelCause(ctx)
	}
	*g = Guard{cancel: cancel, err: err, allow: allow}
	g.trace.GotConn = g.gotConn
	return httptrace.WithClientTrace(ctx, &g.trace), cancel
}

func (g *Guard) gotConn(i httptrace.GotConnInfo) {
	if g.tries > 0 && g.lastWrote() {
		g.wrote++
		if g.wrote > g.allow {
			i.Conn.Close()
			g.cancel(g.err)
			return
		}
	}
	g.tries++
	g.last, _ = i.Conn.(*Conn)
	if g.last != nil {
		g.mark = g.last.written.Load()
	}
}

// Wrote reports whether a try so far wrote on its connection: the
// request reached the peer. Called once the transport is done with the
// request (on its goroutine, as GotConn is): a try that failed to get a
// connection (its dial) after one that wrote was a resend of a request
// the peer had, and its failure is not the request's (a connect failure
// for a request that was sent).
func (g *Guard) Wrote() bool {
	return g.wrote > 0 || g.tries > 0 && g.lastWrote()
}

// lastWrote reports whether the last try wrote on its connection; one
// whose connection counts nothing (not a Conn: a dialer that does not
// wrap, a TLS layer over one) is taken to have written.
func (g *Guard) lastWrote() bool {
	return g.last == nil || g.last.written.Load() != g.mark
}

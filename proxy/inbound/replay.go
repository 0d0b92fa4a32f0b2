package inbound

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"

	"github.com/minimesh/minimesh/internal/netconn"
	"github.com/minimesh/minimesh/internal/rawio"
)

// appConn is a connection to the app that counts the bytes written on
// it, for replayGuard: whether a try's request reached the app.
type appConn struct {
	net.Conn
	written atomic.Int64
}

func (c *appConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// Unwrap, CloseWrite and ReadLazy give an upgrade's relay the
// connection's own (a reset, a half-close, reads without a buffer held).
func (c *appConn) Unwrap() net.Conn  { return c.Conn }
func (c *appConn) CloseWrite() error { return netconn.CloseWrite(c.Conn) }
func (c *appConn) ReadLazy(bufs rawio.Buffers) ([]byte, int, error) {
	return rawio.ReadLazy(c.Conn, bufs)
}

// errNotResent ends a request whose try was written to the app on a
// kept connection that then closed without an answer.
var errNotResent = errors.New("the request was written to the app, which closed the connection without answering; not sent again")

// replayGuard keeps http.Transport from writing a request into the app a
// second time, as Envoy and Linkerd never retry inbound
// (docs/interception.md, "No resilience policy inbound"). The transport
// sends a request again, with no bound on the count and each time on the
// next kept connection, when a kept connection fails before the answer:
// if nothing was written (then it is safe, and stays allowed), or if the
// request is replayable (a bodiless GET, HEAD, OPTIONS, TRACE, or one
// with an Idempotency-Key) however much was written, so an app that
// crashes on a request ran it once per kept connection.
//
// Each try gets its connection through GotConn, on the request's
// goroutine, before the try writes a byte (the transport's write loop
// takes the request after it). The guard notes the connection and its
// write count; at the next try's GotConn, a count that moved means the
// earlier try reached the app: the guard closes the connection just
// handed over, so that the write fails whatever the transport does next
// (cancelling the context alone races the write), and cancels the
// request's context, which ends the transport's loop of tries with
// errNotResent before it takes yet another connection. A write that
// fails on a closed connection has written nothing, so nothing reaches
// the app a second time; the closed connection is one the transport
// would have used for a request that fails anyway.
type replayGuard struct {
	trace  httptrace.ClientTrace
	cancel context.CancelCauseFunc
	last   *appConn // the connection of the request's last try
	mark   int64    // last.written when that try got it
}

// guard returns ctx with g watching the tries of req, a request
// http.Transport may send again after writing it (resendable); cancel
// must be called when the request is done. Other requests are returned
// as they are: the transport sends them again only when nothing was
// written.
func (g *replayGuard) guard(ctx context.Context, req *http.Request) (context.Context, context.CancelCauseFunc) {
	if !resendable(req) {
		return ctx, nil
	}
	ctx, g.cancel = context.WithCancelCause(ctx)
	g.trace.GotConn = g.gotConn
	return httptrace.WithClientTrace(ctx, &g.trace), g.cancel
}

func (g *replayGuard) gotConn(i httptrace.GotConnInfo) {
	c, ok := i.Conn.(*appConn)
	if !ok {
		return
	}
	if g.last != nil && g.last.written.Load() != g.mark {
		c.Close()
		g.cancel(errNotResent)
		return
	}
	g.last, g.mark = c, c.written.Load()
}

// resendable reports whether http.Transport may write the request the
// ReverseProxy makes of req (bodiless when req's Content-Length is 0)
// again after writing it once: its Request.isReplayable.
func resendable(req *http.Request) bool {
	if req.ContentLength != 0 {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return req.Header["Idempotency-Key"] != nil || req.Header["X-Idempotency-Key"] != nil
}

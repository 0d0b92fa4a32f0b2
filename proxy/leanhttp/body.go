package leanhttp

import (
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// reqBody is the body of a request the loop serves: Content-Length bytes
// (at most MaxBody) read from the connection's reader as the handler
// reads them, none ahead.
//
// Each request's is its own. Its reads take a lock, and the loop closes
// it after the handler returns (and before its reader goes back to the
// pool): a handler that breaks the loop's contract (a transport that
// still reads the body from a goroutine of its own) then gets
// http.ErrBodyReadAfterClose, never the next request's bytes.
type reqBody struct {
	c *conn

	mu     sync.Mutex
	left   int64
	err    error // sticky: a failed read leaves the connection out of step
	closed bool
}

func (b *reqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return 0, http.ErrBodyReadAfterClose
	case b.err != nil:
		return 0, b.err
	case b.left == 0:
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.c.br.Read(p)
	b.left -= int64(n)
	if b.left == 0 {
		// All of it: the watch may read the connection now.
		b.c.wstate.CompareAndSwap(wBody, wReq)
		return n, io.EOF
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	b.err = err
	return n, err
}

// Arrived reports whether the rest of the body is in the connection's
// reader: reading it all will not wait for the client. A proxy that
// would hold a small body whole before sending it on asks first, so as
// not to wait for a body its client sends only as answers come (a
// stream of a declared length, an upload the upstream answers early).
func (b *reqBody) Arrived() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err == nil && !b.closed && b.left <= int64(b.c.br.Buffered())
}

// Close leaves the rest of the body to the loop, which reads and drops it
// after the response (endBody).
func (b *reqBody) Close() error { return nil }

// discard reads and drops the rest of the body, by deadline (zero:
// none), and reports why it could not.
func (b *reqBody) discard(deadline time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == io.ErrUnexpectedEOF {
		// The client closed its side mid-body: the next read sees the
		// end and closes the connection, with no "Connection: close"
		// before it, as net/http's server does.
		return nil
	}
	if b.err != nil || b.left == 0 {
		return b.err
	}
	c := b.c
	if !deadline.IsZero() && b.left > int64(c.br.Buffered()) {
		c.rdl = deadline
		_ = c.rwc.SetReadDeadline(deadline)
	}
	n, err := c.br.Discard(int(b.left))
	b.left -= int64(n)
	if err != nil {
		b.err = err
		return err
	}
	c.wstate.CompareAndSwap(wBody, wReq)
	return nil
}

// endBody closes the body after its request's response, and reads and
// drops what the handler left of it (a handler in full duplex), within
// ReadHeaderTimeout (or IdleTimeout): the client may still be sending
// it, and a connection closed with bytes unread is reset, which can
// destroy the response on its way. It reports whether the connection is
// at the next request's start.
func (c *conn) endBody() bool {
	err := c.body.discard(c.dropDeadline())
	c.body.close()
	return err == nil
}

// close ends every later read, once a read in progress is over.
func (b *reqBody) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
}

// lingerWait bounds how long a connection that closes with a body's
// bytes unread waits for the client to stop sending, as net/http's
// server waits (rstAvoidanceDelay).
const lingerWait = 500 * time.Millisecond

// linger half-closes a connection whose request's body could not be
// read to its end (an answer that did not wait for it), and reads and
// drops what the client still sends, within lingerWait: closed with
// bytes unread, the connection would be reset, and a reset can destroy
// the answer before the client has read it.
func (c *conn) linger() {
	_ = c.bw.Flush()
	var nc net.Conn = c.rwc
	for {
		if cw, ok := nc.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
			break
		}
		u, ok := nc.(interface{ Unwrap() net.Conn })
		if !ok {
			return // no half-close: closed as it is
		}
		nc = u.Unwrap()
	}
	c.rdl = aLongTimeAgo
	_ = c.rwc.SetReadDeadline(time.Now().Add(lingerWait))
	_, _ = io.Copy(io.Discard, io.LimitReader(c.rwc, 256<<10))
}

// dropDeadline is how long the loop waits for the rest of a body it
// reads and drops: ReadHeaderTimeout (or IdleTimeout) from now, as for a
// head; zero (no bound) when the server has neither.
func (c *conn) dropDeadline() time.Time {
	d := c.s.Std.ReadHeaderTimeout
	if d <= 0 {
		d = c.s.Std.IdleTimeout
	}
	if d <= 0 {
		return time.Time{}
	}
	return time.Now().Add(d)
}

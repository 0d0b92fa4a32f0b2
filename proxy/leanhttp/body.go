package leanhttp

import (
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/minimesh/minimesh/internal/netconn"
)

// reqBody is the body of a request the loop serves: Content-Length bytes
// (at most MaxBody) read from the connection's reader as the handler
// reads them, none ahead. It answers reads, Close and the response's
// drop of what is left as net/http's server's body does (its sawEOF,
// closed and early close), which TestSameAsNetHTTP compares.
//
// Each request's is its own. Its reads take a lock, and the loop closes
// it after the handler returns (and before its reader goes back to the
// pool): a handler that breaks the loop's contract (a transport that
// still reads the body from a goroutine of its own) then gets
// http.ErrBodyReadAfterClose, never the next request's bytes.
type reqBody struct {
	c *conn

	mu   sync.Mutex
	left int64
	// err is the read that failed, sticky: io.ErrUnexpectedEOF when the
	// client's end came first (reported once; later reads get io.EOF,
	// as net/http's sawEOF gives), else the connection's error.
	err    error
	closed bool
}

func (b *reqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return 0, http.ErrBodyReadAfterClose
	case b.err == io.ErrUnexpectedEOF, b.left == 0:
		return 0, io.EOF
	case b.err != nil:
		return 0, b.err
	case len(p) == 0:
		return 0, nil
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.c.br.Read(p)
	b.left -= int64(n)
	if b.left == 0 {
		b.whole()
		return n, io.EOF
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	b.err = err
	return n, err
}

// whole notes the body read to its end: the watch may read the
// connection now. b.mu is held.
func (b *reqBody) whole() { b.c.wstate.CompareAndSwap(wBody, wReq) }

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

// Close reads and drops the rest of the body (within dropDeadline) and
// ends the handler's reads, as net/http's body's Close does: its error
// is the drop's (io.ErrUnexpectedEOF for a body whose client ended it
// early, unless a read had reported that already).
func (b *reqBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if b.err == io.ErrUnexpectedEOF {
		return nil
	}
	return b.dropLocked(b.c.dropDeadline())
}

// dropLocked reads and drops the rest of the body, by deadline (zero:
// none): nil when it was all read, else the error that ended it
// (io.ErrUnexpectedEOF: the client's end). b.mu is held.
func (b *reqBody) dropLocked(deadline time.Time) error {
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
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		b.err = err
		return err
	}
	b.whole()
	return nil
}

// dropBeforeAnswer is what a response that does not run in full duplex
// does with the body first (net/http's chunkWriter.writeHeader): reads
// and drops its rest, and closes it once read to its end. It reports
// whether the connection may serve another request after the response.
func (b *reqBody) dropBeforeAnswer() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		// The handler closed it (Close read the rest, or failed to).
		return b.err == nil || b.err == io.ErrUnexpectedEOF
	}
	if b.err == io.ErrUnexpectedEOF {
		b.closed = true // the handler saw its end: net/http's sawEOF
		return true
	}
	if b.dropLocked(b.c.dropDeadline()) != nil {
		return false
	}
	b.closed = true
	return true
}

// close ends every later read, once a read in progress is over.
func (b *reqBody) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
}

// endBody closes the body after its request's response and, if the
// connection is to serve another request (reuse), reads and drops what
// the handler left of it (a handler in full duplex), within dropDeadline.
// It reports whether the connection is at the next request's start, or
// its client's end: else it closes, lingering (linger), since the client
// may still be sending the body.
func (c *conn) endBody(reuse bool) bool {
	b := c.body
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	var err error
	if reuse {
		err = b.dropLocked(c.dropDeadline())
	} else if b.err == nil && b.left > 0 {
		return false // not waited for: the connection closes anyway
	} else {
		err = b.err
	}
	return err == nil || err == io.ErrUnexpectedEOF
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
	cw, ok := netconn.Find[interface{ CloseWrite() error }](c.rwc)
	if !ok {
		return // no half-close: closed as it is
	}
	_ = cw.CloseWrite()
	c.rdl = aLongTimeAgo
	_ = c.rwc.SetReadDeadline(time.Now().Add(lingerWait))
	_, _ = io.Copy(io.Discard, io.LimitReader(c.rwc, 256<<10))
}

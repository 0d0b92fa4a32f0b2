package leanhttp

import (
	"bufio"
	"io"
	"sync"

	"github.com/minimesh/minimesh/internal/rawio"
)

// reader is a connection's read buffer: bufio.Reader's Peek, Discard and
// Read, but a read into an empty buffer is lazy (rawio.ReadLazy): the
// buffer goes back to a pool if the read finds nothing, before the
// goroutine parks, and one comes back with the bytes. Between requests
// the connection's writer goes with it (idle). An idle keep-alive
// connection then holds no buffers: net/http's keeps 8 KB for each, half
// of its cost (docs/benchmarks.md, "Per idle connection"). When the next
// request is already there, no buffer changes hands.
type reader struct {
	c *conn
	// lazy is the connection's own lazy read, if it has one: asserted
	// once, not on every wait.
	lazy rawio.LazyReader
	buf  []byte // nil when none is held
	r    int    // buf[r:w] is read and not yet taken
	w    int
	err  error // the source's, given once the buffer is empty
	// idle: the wait is for the next request, with the response
	// flushed, so the writer goes back too if the wait parks.
	idle bool
}

// bufs are the readers' buffers, as arrays: a pointer goes in and out of
// the pool with no allocation.
var bufs = sync.Pool{New: func() any { return new([readBufSize]byte) }}

func getBuf() []byte { return bufs.Get().(*[readBufSize]byte)[:] }

func putBuf(b []byte) {
	if cap(b) >= readBufSize {
		bufs.Put((*[readBufSize]byte)(b[:readBufSize]))
	}
}

// Get is rawio.Buffers': the reader's own buffer first, then the pool's.
func (b *reader) Get() []byte {
	if buf := b.buf; buf != nil {
		b.buf = nil
		return buf
	}
	return getBuf()
}

// Put is rawio.Buffers': a read found nothing, and its goroutine parks.
func (b *reader) Put(buf []byte) {
	putBuf(buf)
	if b.idle {
		b.c.releaseWriter()
	}
}

// drop gives the buffer back, with whatever it holds: the connection is
// done.
func (b *reader) drop() {
	if b.buf != nil {
		putBuf(b.buf)
		b.buf, b.r, b.w = nil, 0, 0
	}
}

func (b *reader) Buffered() int { return b.w - b.r }

func (b *reader) Size() int { return readBufSize }

// readErr returns the source's error, once.
func (b *reader) readErr() error {
	err := b.err
	b.err = nil
	return err
}

// fill reads once more from the source: a byte the watch read first,
// then the connection, lazily when the buffer is empty (Get, Put).
func (b *reader) fill() {
	c := b.c
	if b.r == b.w && !c.hasByte {
		b.r, b.w = 0, 0
		var buf []byte
		var n int
		var err error
		if b.lazy != nil {
			buf, n, err = b.lazy.ReadLazy(b)
		} else {
			buf, n, err = rawio.ReadLazy(c.rwc, b)
		}
		b.buf, b.w, b.err = buf, n, err
		return
	}
	if b.buf == nil {
		b.buf = getBuf()
	}
	if b.r > 0 {
		copy(b.buf, b.buf[b.r:b.w])
		b.w -= b.r
		b.r = 0
	}
	for range 100 { // as bufio: a source that returns nothing, forever, is an error
		n, err := b.read(b.buf[b.w:])
		b.w += n
		if err != nil {
			b.err = err
			return
		}
		if n > 0 {
			return
		}
	}
	b.err = io.ErrNoProgress
}

// read is one read of the source into p (not empty).
func (b *reader) read(p []byte) (int, error) {
	c := b.c
	if c.hasByte {
		p[0] = c.byteBuf[0]
		c.hasByte = false
		return 1, nil
	}
	return c.rwc.Read(p)
}

// Peek is bufio.Reader's Peek.
func (b *reader) Peek(n int) ([]byte, error) {
	for b.w-b.r < n && b.w-b.r < readBufSize && b.err == nil {
		b.fill()
	}
	if n > readBufSize {
		return b.buf[b.r:b.w], bufio.ErrBufferFull
	}
	var err error
	if avail := b.w - b.r; avail < n {
		n = avail
		if err = b.readErr(); err == nil {
			err = bufio.ErrBufferFull
		}
	}
	return b.buf[b.r : b.r+n], err
}

// Discard is bufio.Reader's Discard.
func (b *reader) Discard(n int) (int, error) {
	if n <= 0 {
		return 0, nil
	}
	remain := n
	for {
		skip := b.Buffered()
		if skip == 0 {
			if b.err != nil {
				return n - remain, b.readErr()
			}
			b.fill()
			skip = b.Buffered()
		}
		skip = min(skip, remain)
		b.r += skip
		remain -= skip
		if remain == 0 {
			return n, nil
		}
	}
}

// Read is bufio.Reader's Read: what is buffered, else one read of the
// source, straight into p when p is at least the buffer's size.
func (b *reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		if b.Buffered() > 0 {
			return 0, nil
		}
		return 0, b.readErr()
	}
	if b.r == b.w {
		if b.err != nil {
			return 0, b.readErr()
		}
		if len(p) >= readBufSize {
			n, err := b.read(p)
			return n, err
		}
		if b.buf == nil {
			b.buf = getBuf()
		}
		b.r, b.w = 0, 0
		n, err := b.read(b.buf)
		b.w = n
		if n == 0 {
			return 0, err
		}
		b.err = err
	}
	n := copy(p, b.buf[b.r:b.w])
	b.r += n
	return n, nil
}

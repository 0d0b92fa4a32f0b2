package rawio

import (
	"io"
	"os"
	"syscall"
)

// Buffers lends ReadLazy its buffers: Get one for a read, Put back one
// whose read found nothing (before the wait) or failed. A caller may lend
// its own empty buffer first, so that bytes already waiting move no
// buffer at all.
type Buffers interface {
	Get() []byte
	Put([]byte)
}

// ReadLazy is Read into a buffer taken from bufs only once there are
// bytes to read: before the poller waits it goes back, so a connection
// waiting for its peer holds none. A server with many idle
// keep-alive connections keeps a read buffer for none of them
// (docs/benchmarks.md, "Per idle connection"), where net/http keeps 4
// KB for each. It returns the buffer and the n > 0 bytes read into its
// start (with the error that came with them, if any), or no buffer, 0
// and the error (io.EOF at the peer's close).
//
// c's own ReadLazy is used when it has one (a connection that reads
// raw, or a wrapper that passes it on); else c.Read into a buffer got
// first, which holds it while c waits, as Read would.
func ReadLazy(c io.Reader, bufs Buffers) ([]byte, int, error) {
	if lz, ok := c.(LazyReader); ok {
		return lz.ReadLazy(bufs)
	}
	b := bufs.Get()
	for range 100 { // as bufio: a reader that returns nothing, forever, is an error
		n, err := c.Read(b)
		if n > 0 {
			return b, n, err
		}
		if err != nil {
			bufs.Put(b)
			return nil, 0, err
		}
	}
	bufs.Put(b)
	return nil, 0, io.ErrNoProgress
}

// LazyReader is a connection with a ReadLazy of its own: *Conn, and the
// wrappers that pass it on. A caller that reads one connection often
// asserts it once.
type LazyReader interface {
	ReadLazy(bufs Buffers) ([]byte, int, error)
}

// ReadLazy is the package's ReadLazy on x's raw reads: each read(2)
// takes a buffer from bufs, and one that finds nothing gives it back
// before the poller waits.
func (x *IO) ReadLazy(bufs Buffers) ([]byte, int, error) {
	x.rmu.Lock()
	x.bufs = bufs
	x.rbuf, x.rn, x.rerr = nil, 0, 0
	err := x.rc.Read(x.lazyFn)
	b, n, errno := x.rbuf, x.rn, x.rerr
	x.rbuf, x.bufs = nil, nil
	x.rmu.Unlock()
	if n > 0 {
		return b, n, nil
	}
	return nil, 0, x.lazyErr(err, errno)
}

// lazyErr is ReadLazy's error, out of its line: ReadLazy is on the stack
// of every idle connection's goroutine, and the shallower that stack, the
// sooner the collector halves it (docs/benchmarks.md, "Per idle
// connection").
//
//go:noinline
func (x *IO) lazyErr(err error, errno syscall.Errno) error {
	switch {
	case err != nil:
		return x.opError("read", err)
	case errno != 0:
		return x.opError("read", os.NewSyscallError("read", errno))
	}
	return io.EOF
}

// lazyRead is ReadLazy's step: true with the bytes read (rbuf, rn), the
// peer's close or an error; false, the buffer given back, when there is
// nothing to read yet.
func (x *IO) lazyRead(fd uintptr) bool {
	b := x.bufs.Get()
	for {
		n, e := sysRead(fd, b)
		switch e {
		case 0:
			if n > 0 {
				x.rbuf, x.rn = b, n
			} else {
				x.bufs.Put(b)
			}
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			x.bufs.Put(b)
			return false // the poller waits for bytes
		}
		x.bufs.Put(b)
		x.rerr = e
		return true
	}
}

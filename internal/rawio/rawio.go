// Package rawio reads and writes a TCP connection with raw system calls,
// through the connection's own poller (syscall.RawConn), instead of
// net.Conn's Read and Write.
//
// Why: Go's runtime parks its monitor thread (sysmon) while every P is
// idle, and the next system call made through syscall.Syscall wakes it.
// A sidecar at a steady rate of small requests goes idle between most of
// them, so each request paid a wake-up of that thread, which then slept
// 20 µs two or three times before parking again: several context switches
// per request, a sixth of the sidecar's CPU with one P
// (docs/benchmarks.md, "The monitor thread"). A socket the poller owns is
// non-blocking: its read(2) and write(2) never block, so they need none of
// syscall.Syscall's hand-over of the P, and raw calls leave the monitor
// asleep.
//
// Deadlines, Close and the wait for readiness are the poller's, exactly as
// for net.Conn; errors are the *net.OpError net.Conn returns.
package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/minimesh/minimesh/internal/netconn"
)

// Off turns raw I/O off for the connections made after it is set
// (minimesh-proxy's --raw-io=false): a way out, and the switch the
// benchmarks compare. Set it before the first connection.
var Off bool

// IO is one connection's reads and writes. Concurrent Reads (and
// concurrent Writes) are serialised, as on net.Conn.
type IO struct {
	c  *net.TCPConn
	rc syscall.RawConn

	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerr   syscall.Errno
	readFn func(uintptr) bool
	peekFn func(uintptr)
	lazyFn func(uintptr) bool
	bufs   Buffers // ReadLazy's
	peeked byte

	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werr    syscall.Errno
	writeFn func(uintptr) bool

	// Exchange's state, under both locks.
	exchangeFn    func(uintptr) bool
	unasked, sent bool
}

// New returns c's raw reads and writes, or nil when c has no raw access
// (then use c's own Read and Write).
func New(c *net.TCPConn) *IO {
	if Off {
		return nil
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	x := &IO{c: c, rc: rc}
	x.readFn = x.read
	x.writeFn = x.write
	x.peekFn = x.peek
	x.lazyFn = x.lazyRead
	x.exchangeFn = x.exchangeStep
	return x
}

// Pending reports whether c, a connection nobody is reading, has
// anything waiting to be read: bytes its peer sent unasked, its peer's
// close, or an error. A kept-alive upstream connection with any of them
// would read it as the answer to the next request (a 408 a server sends
// before it closes an idle connection, bytes after a response's end): it
// is not fit for one. One recv(2) with MSG_PEEK|MSG_DONTWAIT, which
// consumes nothing and never blocks. A connection with no socket under
// it reports false.
func Pending(c net.Conn) bool {
	if raw, ok := netconn.Find[*Conn](c); ok {
		return raw.io.pending() // no allocation: the hot path's
	}
	_, e, err := peekConn(c)
	if err == errNoSocket {
		return false
	}
	return err != nil || e != syscall.EAGAIN
}

// Closed reports whether c's peer closed its side in order with nothing
// left to read before that end: c's next read returns io.EOF at once. One
// recv(2) with MSG_PEEK|MSG_DONTWAIT, as Pending's, which another
// goroutine's read of c may run beside (it takes no read lock); a
// connection with no socket under it reports false. It is for error paths
// (it allocates): telling a peer that was done from one that was not.
func Closed(c net.Conn) bool {
	n, e, err := peekConn(c)
	return err == nil && e == 0 && n == 0
}

var errNoSocket = errors.New("no socket under the connection")

// peekConn peeks at the socket under c (through wrappers that Unwrap) as
// peekFd does; errNoSocket when there is none, or Control's error.
func peekConn(c net.Conn) (n int, e syscall.Errno, err error) {
	sc, ok := netconn.Find[syscall.Conn](c) // *net.TCPConn, and wrappers that embed one
	if !ok {
		return 0, 0, errNoSocket
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var b byte
	err = rc.Control(func(fd uintptr) { n, e = peekFd(fd, &b) })
	return n, e, err
}

// pending is Pending with the connection's own buffer and callback: no
// allocation.
func (x *IO) pending() bool {
	x.rmu.Lock()
	x.rerr = 0
	err := x.rc.Control(x.peekFn)
	e := x.rerr
	x.rmu.Unlock()
	return err != nil || e != syscall.EAGAIN
}

func (x *IO) peek(fd uintptr) { _, x.rerr = peekFd(fd, &x.peeked) }

// peekFd peeks at fd for Pending and Closed: EAGAIN when nothing waits;
// no error and n 1 for a byte or 0 for the peer's close; or the error.
func peekFd(fd uintptr, b *byte) (n int, e syscall.Errno) {
	for {
		if n, e = sysPeek(fd, b); e != syscall.EINTR {
			return n, e
		}
	}
}

// Read is net.Conn's Read.
func (x *IO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		// As net.Conn: no read(2) and no deadline check, but an error
		// once the connection is closed (its read lock fails, here
		// Control's reference).
		if err := x.rc.Control(noControl); err != nil {
			return 0, x.opError("read", err)
		}
		return 0, nil
	}
	x.rmu.Lock()
	x.rbuf, x.rn, x.rerr = p, 0, 0
	err := x.rc.Read(x.readFn)
	n, errno := x.rn, x.rerr
	x.rbuf = nil
	x.rmu.Unlock()
	switch {
	case err != nil:
		return n, x.opError("read", err)
	case errno != 0:
		return n, x.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// noControl is Read's check that the connection is open, for an empty p.
var noControl = func(uintptr) {}

func (x *IO) read(fd uintptr) bool {
	for {
		n, e := sysRead(fd, x.rbuf)
		switch e {
		case 0:
			x.rn = n
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // the poller waits for more
		}
		x.rerr = e
		return true
	}
}

// Write is net.Conn's Write: all of p, or an error.
func (x *IO) Write(p []byte) (int, error) {
	x.wmu.Lock()
	x.wbuf, x.wn, x.werr = p, 0, 0
	// Empty p too: as net.Conn's, the write lock and the deadline are
	// checked (a closed connection or a passed deadline is an error);
	// write finds nothing to write.
	err := x.rc.Write(x.writeFn)
	n, errno := x.wn, x.werr
	x.wbuf = nil
	x.wmu.Unlock()
	switch {
	case err != nil:
		return n, x.opError("write", err)
	case errno != 0:
		return n, x.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// write writes the rest of wbuf: true once it is all written or failed
// (werr), false when the socket has no room left (EAGAIN), for the
// poller to wait for it.
func (x *IO) write(fd uintptr) bool {
	for x.wn < len(x.wbuf) {
		n, e := sysWrite(fd, x.wbuf[x.wn:])
		switch e {
		case 0:
			x.wn += n
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		x.werr = e
		return true
	}
	return true
}

// opError is err as net.Conn's Read and Write return it. The poller's own
// errors (a deadline, a closed connection) come wrapped as "raw-read" and
// "raw-write": unwrapped first, so that a message reads as net.Conn's.
func (x *IO) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: x.c.LocalAddr(), Addr: x.c.RemoteAddr(), Err: err}
}

// Conn is a *net.TCPConn whose Read and Write are raw; everything else
// (CloseWrite, SyscallConn, deadlines) is the TCPConn's.
type Conn struct {
	*net.TCPConn
	io *IO
}

// Wrap returns c with raw reads and writes when it is a TCP connection
// that has them, else c itself.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	x := New(tc)
	if x == nil {
		return c
	}
	return &Conn{TCPConn: tc, io: x}
}

func (c *Conn) Read(p []byte) (int, error)  { return c.io.Read(p) }
func (c *Conn) Write(p []byte) (int, error) { return c.io.Write(p) }

// ReadLazy is the package's ReadLazy.
func (c *Conn) ReadLazy(bufs Buffers) ([]byte, int, error) {
	return c.io.ReadLazy(bufs)
}

// Unwrap returns the TCP connection.
func (c *Conn) Unwrap() net.Conn { return c.TCPConn }

package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/minimesh/minimesh/internal/netconn"
)

// ErrUnasked is Exchange's refusal of a connection that had something to
// read before the request was written: bytes its peer sent unasked, its
// close, or an error. Nothing was written.
var ErrUnasked = errors.New("the peer sent bytes, closed or reset the connection before the request was written")

// Exchange writes w, a request, on c, a connection nobody else reads or
// writes, and reads the first bytes of its answer into r (not empty). c
// must have nothing to read before w is written: a kept-alive
// connection with anything there (a 408 a server sends before it closes
// an idle connection, bytes past a response's end, its close) would read
// it as the answer. Then nothing is written and the error is ErrUnasked.
//
// Why not Pending, Write and Read: that is four system calls, and two of
// them find nothing: the look before the write, and the read right after
// it, which comes tens of microseconds before the answer. On the virtual
// machines the sidecar is measured on a system call costs 1.2-3 µs
// (docs/benchmarks.md, "One wait for the upstream's answer"). Here the
// look is the read that finds nothing, and the read after the write is
// left out: the poller's wait begins with no try.
//
// Why that is safe only here: Go's poller (internal/poll's RawRead)
// clears a descriptor's readiness before its first try, so a read that
// waits without trying could wait for bytes that arrived before the
// clear, whose edge is gone. The clear comes before the look, and the
// answer can only follow the request, written after the look: every
// byte of it brings an edge after the clear.
//
// On a connection without raw access, Exchange is Pending, Write and
// Read.
func Exchange(c net.Conn, w, r []byte) (int, error) {
	if len(r) == 0 {
		return 0, io.ErrShortBuffer
	}
	if raw, ok := netconn.Find[*Conn](c); ok {
		return raw.io.exchange(w, r)
	}
	if Pending(c) {
		return 0, ErrUnasked
	}
	if _, err := c.Write(w); err != nil {
		return 0, err
	}
	return c.Read(r)
}

func (x *IO) exchange(w, r []byte) (int, error) {
	x.wmu.Lock()
	x.rmu.Lock()
	x.wbuf, x.wn, x.werr = w, 0, 0
	x.rbuf, x.rn, x.rerr = r, 0, 0
	x.unasked, x.sent = false, false
	err := x.rc.Read(x.exchangeFn)
	n, errno, wn, werr, unasked, sent := x.rn, x.rerr, x.wn, x.werr, x.unasked, x.sent
	x.wbuf, x.rbuf = nil, nil
	x.rmu.Unlock()
	x.wmu.Unlock()
	switch {
	case err != nil:
		// The poller's: closed, or a deadline, before the answer (and
		// perhaps before the request: then nothing was written).
		return n, x.opError("read", err)
	case unasked:
		return 0, ErrUnasked
	case werr != 0:
		return 0, x.opError("write", os.NewSyscallError("write", werr))
	case !sent:
		// The socket's buffer is full (a request larger than it): the
		// rest waits for room as any write does, and the answer is read
		// as any answer is.
		if _, err := x.Write(w[wn:]); err != nil {
			return 0, err
		}
		return x.Read(r)
	case errno != 0:
		return n, x.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// exchangeStep is exchangeFn. Its first call looks, then writes (write,
// as Write's), and returns false, so that the poller waits for the
// answer; the next calls read it (read, as Read's).
func (x *IO) exchangeStep(fd uintptr) bool {
	if x.sent {
		return x.read(fd)
	}
	for {
		_, e := sysRead(fd, x.rbuf)
		if e == syscall.EINTR {
			continue
		}
		if e != syscall.EAGAIN {
			x.unasked = true // bytes, the peer's close (0), or an error
			return true
		}
		break
	}
	if !x.write(fd) || x.werr != 0 {
		return true // failed, or the rest after a wait for room (exchange)
	}
	x.sent = true
	return false
}

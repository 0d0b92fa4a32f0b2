package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The go-epoll scenarios are go-relay with an event loop of its own in
// place of Go's poller: nginx's design written in Go, to measure what such
// a loop would save a Go sidecar (docs/benchmarks.md, "An event loop of its
// own"). One goroutine serves every connection from an epoll
// descriptor of its own, edge-triggered, and reads a connection only while
// the last read filled its buffer (nginx's rule: a shorter read drained the
// socket, and more bytes bring a new edge): no read that finds nothing, no
// goroutine per connection, no park and wake per read. The framing is
// go-relay's (frame): bodiless requests, responses framed by
// Content-Length; anything else closes the pair. Unlike go-relay, which
// reads a response only after a request, the loop passes on whatever
// either side sends whole (an upstream's unasked 408 too): the
// measurement sends none.
//
// go-epoll waits for its descriptor through Go's poller (the loop's epoll
// descriptor is itself pollable): what a sidecar with other goroutines
// (xDS, metrics, admin) could run on one P. go-epoll-raw blocks in
// epoll_pwait holding its P: the floor of such a loop, which only a
// process with nothing else to run can afford.
const (
	keyEpoll    = "go-epoll"
	keyEpollRaw = "go-epoll-raw"
)

// epollArg is the hidden first argument that runs the harness binary as
// the loop: bench epoll-relay poller|raw LISTEN UPSTREAM.
const epollArg = "epoll-relay"

func startEpollRelay(ctx context.Context, ps *procs, dir, upstream string, raw bool) (*target, error) {
	key, mode, how := keyEpoll, "poller", "its epoll descriptor waited on through Go's poller"
	if raw {
		key, mode, how = keyEpollRaw, "raw", "blocking in epoll_pwait with its P held"
	}
	return startSelf(ctx, ps, dir, upstream, key, []string{epollArg, mode},
		"go-relay's framing on an event loop of its own (one goroutine, edge-triggered epoll, nginx's short-read rule), "+
			how+", GOMAXPROCS=1 GOGC=50")
}

// epollRelay is the loop: its epoll descriptor, listener, and an eventfd
// that Close writes to end Serve.
type epollRelay struct {
	ep, lfd, wake int
	epf           *os.File // the poller's hold on ep (not raw): closes it
	raw           bool
	up            unix.SockaddrInet4
	sides         map[int]*eside
	// closing are the descriptors dropped in the current batch of
	// events, closed after it: a number closed and reused by an accept
	// within one batch would get the old descriptor's later events.
	closing []int
	// mu orders Close's write to wake before close's close of it.
	mu     sync.Mutex
	closed bool
	// drops counts the pairs the loop has closed (its tests' check that
	// it closes none it should keep).
	drops atomic.Int64
}

// eside is one connection of a client's pair: what it has read of the
// message in progress, and the descriptor its messages go to.
type eside struct {
	fd, peer int
	response bool // the upstream's side: it reads responses
	eof      bool // it has read its connection's end, passed on to peer
	buf      []byte
	n        int
}

func newEpollRelay(listen, upstream string, raw bool) (*epollRelay, error) {
	r := &epollRelay{raw: raw, sides: map[int]*eside{}, ep: -1, lfd: -1, wake: -1}
	up, err := sockaddr(upstream)
	if err != nil {
		return nil, err
	}
	r.up = up
	ln, err := sockaddr(listen)
	if err != nil {
		return nil, err
	}
	if r.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if r.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		r.close()
		return nil, os.NewSyscallError("eventfd", err)
	}
	if r.lfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
		r.close()
		return nil, os.NewSyscallError("socket", err)
	}
	_ = unix.SetsockoptInt(r.lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(r.lfd, &ln); err != nil {
		r.close()
		return nil, os.NewSyscallError("bind", err)
	}
	if err := unix.Listen(r.lfd, 1024); err != nil {
		r.close()
		return nil, os.NewSyscallError("listen", err)
	}
	for _, fd := range []int{r.lfd, r.wake} {
		// Level-triggered: Serve accepts until EAGAIN anyway.
		if err := unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			r.close()
			return nil, os.NewSyscallError("epoll_ctl", err)
		}
	}
	return r, nil
}

func sockaddr(hostport string) (unix.SockaddrInet4, error) {
	a, err := net.ResolveTCPAddr("tcp4", hostport)
	if err != nil {
		return unix.SockaddrInet4{}, err
	}
	sa := unix.SockaddrInet4{Port: a.Port}
	copy(sa.Addr[:], a.IP.To4())
	return sa, nil
}

// Addr is the address the loop listens on.
func (r *epollRelay) Addr() string {
	sa, err := unix.Getsockname(r.lfd)
	if err != nil {
		return ""
	}
	in, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		return ""
	}
	return net.JoinHostPort(net.IP(in.Addr[:]).String(), strconv.Itoa(in.Port))
}

// Close ends Serve (from another goroutine), which then closes every
// descriptor; net.ErrClosed once it has.
func (r *epollRelay) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return net.ErrClosed
	}
	var one = [8]byte{1}
	_, err := unix.Write(r.wake, one[:])
	return err
}

func (r *epollRelay) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.flush()
	for fd := range r.sides {
		unix.Close(fd)
	}
	for _, fd := range []int{r.lfd, r.wake} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	if r.epf != nil {
		r.epf.Close()
	} else if r.ep >= 0 {
		unix.Close(r.ep)
	}
}

// Serve runs the loop on the calling goroutine until Close or a failure
// of the loop itself. The goroutine is not locked to its thread: a locked
// one that parks in the poller's wait costs a thread hand-off (futex) per
// wait.
func (r *epollRelay) Serve() error {
	defer r.close()
	wait, err := r.waiter()
	if err != nil {
		return err
	}
	evs := make([]unix.EpollEvent, 128)
	for {
		n, err := wait(evs)
		if err != nil {
			return err
		}
		for _, ev := range evs[:n] {
			switch fd := int(ev.Fd); fd {
			case r.wake:
				return nil
			case r.lfd:
				r.accept()
			default:
				if s := r.sides[fd]; s != nil {
					r.serve(s, ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0)
				}
			}
		}
		r.flush()
	}
}

// flush closes the descriptors dropped in a batch of events.
func (r *epollRelay) flush() {
	for _, fd := range r.closing {
		unix.Close(fd)
	}
	r.closing = r.closing[:0]
}

// waiter returns the loop's wait for events: blocking in epoll_pwait
// (raw), or through Go's poller on the epoll descriptor, which is readable
// while events wait in it.
//
// The raw wait ends every rawTick: a goroutine in a raw call holds its P,
// and the runtime's stop of the world waits for it (the runtime's
// preemption signal ends the wait sooner, unless GODEBUG=asyncpreemptoff=1
// turns it off). Through the poller, a try comes before each wait, so an
// event that came before the poller cleared the descriptor's readiness is
// not missed: it is still in the descriptor.
func (r *epollRelay) waiter() (func([]unix.EpollEvent) (int, error), error) {
	if r.raw {
		return func(evs []unix.EpollEvent) (int, error) {
			for {
				n, e := epollWait(r.ep, evs, int(rawTick/time.Millisecond))
				if e == unix.EINTR || (e == 0 && n == 0) {
					// A signal (most often the runtime's, asking the
					// goroutine to stop for the GC or the scheduler) or
					// rawTick gone: a raw call never stops on its own.
					runtime.Gosched()
					continue
				}
				if e != 0 {
					return 0, os.NewSyscallError("epoll_pwait", e)
				}
				return n, nil
			}
		}, nil
	}
	if err := unix.SetNonblock(r.ep, true); err != nil {
		return nil, err
	}
	r.epf = os.NewFile(uintptr(r.ep), "epoll")
	rc, err := r.epf.SyscallConn()
	if err != nil {
		return nil, err
	}
	var got int
	var werr syscall.Errno
	var evs []unix.EpollEvent
	try := func(fd uintptr) bool {
		n, e := epollWait(int(fd), evs, 0)
		for e == unix.EINTR {
			n, e = epollWait(int(fd), evs, 0)
		}
		switch {
		case e == 0 && n == 0:
			return false
		case e != 0:
			werr = e
		}
		got = n
		return true
	}
	return func(buf []unix.EpollEvent) (int, error) {
		evs, got, werr = buf, 0, 0
		if err := rc.Read(try); err != nil {
			return 0, err
		}
		if werr != 0 {
			return 0, os.NewSyscallError("epoll_pwait", werr)
		}
		return got, nil
	}, nil
}

// accept takes every waiting connection and dials the upstream for each,
// blocking (a benchmark's loopback: at once). A failed accept (EMFILE) is
// retried on the listener's next event: level-triggered, at once, a busy
// loop until a descriptor is free, which the benchmark never reaches.
func (r *epollRelay) accept() {
	for {
		cfd, _, err := unix.Accept4(r.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return // EAGAIN: no more; anything else: the next event tries again
		}
		ufd, err := r.dial()
		if err != nil {
			unix.Close(cfd)
			continue
		}
		c := &eside{fd: cfd, peer: ufd, buf: make([]byte, 4096)}
		u := &eside{fd: ufd, peer: cfd, response: true, buf: make([]byte, 4096)}
		r.sides[cfd], r.sides[ufd] = c, u
		for _, s := range []*eside{c, u} {
			_ = unix.SetsockoptInt(s.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) // as Go's and nginx's
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(s.fd)}
			if err := unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
				r.drop(c)
				break
			}
		}
	}
}

// dial connects to the upstream, blocking (loopback: at once), and
// returns the connection non-blocking.
func (r *epollRelay) dial() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, &r.up); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// serve reads what s's edge brought: until a read comes back shorter than
// the room it had, passing each whole message to s's peer. With the peer's
// end or an error in the event (ended), until EAGAIN or the end instead:
// the end's edge may have come with the last bytes, and a short read of
// those would leave it unread (nginx's pending_eof).
func (r *epollRelay) serve(s *eside, ended bool) {
	for {
		room := len(s.buf) - s.n
		if room == 0 {
			r.drop(s) // longer than the relay frames
			return
		}
		n, e := rawRead(s.fd, s.buf[s.n:])
		switch e {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return
		default:
			r.drop(s)
			return
		}
		if n == 0 {
			// The end, passed on as go-relay's (a TCP relay's) would be:
			// the peer's write side shut, the pair kept until both ends
			// came, so that an answer on its way still arrives.
			s.eof = true
			if p := r.sides[s.peer]; s.n > 0 || p == nil || p.eof || unix.Shutdown(s.peer, unix.SHUT_WR) != nil {
				r.drop(s)
			}
			return
		}
		s.n += n
		want, err := frame(s.buf[:s.n], s.response)
		if err != nil {
			r.drop(s)
			return
		}
		if want > 0 {
			if !writeAll(s.peer, s.buf[:want]) {
				r.drop(s)
				return
			}
			s.n = 0
		}
		if n < room && !ended {
			return // drained: more bytes bring another edge
		}
	}
}

// drop takes s and its peer out of the loop, and has them closed after
// the batch of events (flush; closing removes them from the epoll set).
func (r *epollRelay) drop(s *eside) {
	r.drops.Add(1)
	for _, fd := range []int{s.fd, s.peer} {
		if r.sides[fd] != nil {
			delete(r.sides, fd)
			r.closing = append(r.closing, fd)
		}
	}
}

// writeAll writes p whole. A full socket buffer fails it: the relay's
// messages are small, and a relay that waited for room would need a
// write queue per connection, which the measurement does not exercise.
func writeAll(fd int, p []byte) bool {
	for len(p) > 0 {
		n, e := rawWrite(fd, p)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return false
		}
		p = p[n:]
	}
	return true
}

// rawTick bounds the raw loop's wait (waiter).
const rawTick = 10 * time.Millisecond

// rawRead, rawWrite and epollWait are the system calls without
// syscall.Syscall's entry and exit, as the sidecar's (internal/rawio): on
// non-blocking descriptors they never block, and raw calls leave the
// runtime's monitor thread asleep while the P is idle. The raw loop's
// epollWait blocks, up to rawTick, holding its P: the monitor thread, which
// sees the P busy, stays awake then.
func rawRead(fd int, p []byte) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

func rawWrite(fd int, p []byte) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

func epollWait(ep int, evs []unix.EpollEvent, timeout int) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)),
		uintptr(timeout), 0, 0)
	return int(n), e
}

// runEpollRelay serves the loop until the process is stopped or the loop
// fails, with that failure.
func runEpollRelay(mode, listen, upstream string) error {
	if mode != "raw" && mode != "poller" {
		return fmt.Errorf("epoll-relay: mode %q, want raw or poller", mode)
	}
	r, err := newEpollRelay(listen, upstream, mode == "raw")
	if err != nil {
		return err
	}
	if err := r.Serve(); err != nil {
		return err
	}
	return errors.New("epoll-relay: closed")
}

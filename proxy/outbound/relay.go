package outbound

import (
	"errors"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/internal/rawio"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// Results of Relay, as minimesh_tcp_connections_total's result label.
const (
	RelayOK          = tcpOK
	RelayReset       = tcpReset
	RelayIdleTimeout = tcpIdleTimeout
	RelayShutdown    = tcpShutdown
)

// Relay copies an opaque TCP connection both ways between client and
// server with ServeTCP's relay (half-closes passed on, a reset on one side
// resets the other, small buffers while quiet), until both directions are
// done, a side fails, or nothing moved for idle; then it closes both. It
// counts bytes in bytes as they pass and returns the bytes each way (client
// to server first) and the result: RelayOK, RelayReset or
// RelayIdleTimeout. The inbound listener relays into the app with it.
func Relay(client, server net.Conn, bytes *telemetry.TCPBytes, idle time.Duration) (sent, received int64, result string) {
	if idle <= 0 {
		idle = DefaultTCPIdleTimeout
	}
	rl := &relay{client: client, up: server, bytes: bytes}
	return rl.run(idle)
}

// Abort resets a connection (SO_LINGER 0, through wrappers that Unwrap to
// a TCP connection) and closes it: the peer learns at once, as from a
// refused connect.
func Abort(c net.Conn) { abort(c) }

// abort resets a connection: the app learns at once that it failed, as
// from a refused connect, rather than reading an orderly end.
func abort(c net.Conn) {
	for x := c; x != nil; {
		if l, ok := x.(interface{ SetLinger(int) error }); ok {
			_ = l.SetLinger(0)
			break
		}
		u, ok := x.(interface{ Unwrap() net.Conn })
		if !ok {
			break
		}
		x = u.Unwrap()
	}
	_ = c.Close()
}

// relay copies one opaque connection both ways.
type relay struct {
	client, up     net.Conn
	bytes          *telemetry.TCPBytes
	sent, received atomic.Int64
	start          time.Time    // monotonic
	active         atomic.Int64 // when a byte last moved, as time since start
	idle, failed   atomic.Bool
	// closed[d] is set once direction d (0 from the client, 1 to it) has
	// read its side's orderly end and passed it on.
	closed [2]atomic.Bool
	// late is set when a side reset the connection once the other had
	// closed (lateReset): an orderly end, whose reset is still passed on.
	late atomic.Bool
	once sync.Once
	// small are the copy buffers while a direction is quiet: a relay
	// holds 4 KiB while idle, and a 32 KiB pooled buffer only while a
	// direction fills its reads.
	small [2][2 << 10]byte
}

// run copies until both directions are done, a side fails, or nothing
// moved for idle. It returns the bytes each way and the result.
func (r *relay) run(idle time.Duration) (sent, received int64, result string) {
	r.start = time.Now()
	var t *time.Timer
	// Armed after t is set, which the func reads. It looks when the idle
	// time would be up since the last byte, and again later if a byte
	// moved since.
	t = time.AfterFunc(math.MaxInt64, func() {
		if quiet := time.Since(r.start) - time.Duration(r.active.Load()); quiet < idle {
			t.Reset(idle - quiet)
			return
		}
		r.idle.Store(true)
		r.abort()
	})
	t.Reset(idle)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.copy(0, r.up, r.client, &r.sent, r.bytes.Sent, r.small[0][:])
	}()
	r.copy(1, r.client, r.up, &r.received, r.bytes.Received, r.small[1][:])
	wg.Wait()
	t.Stop()
	if r.late.Load() {
		// The side that closed first learns of the other's reset: it may
		// still have been reading (a half-close), and a reset must never
		// reach it as an orderly end.
		r.abort()
	}
	r.client.Close()
	r.up.Close()
	switch {
	case r.idle.Load():
		result = tcpIdleTimeout
	case r.failed.Load():
		result = tcpReset
	default:
		result = tcpOK
	}
	return r.sent.Load(), r.received.Load(), result
}

type counter interface{ Add(float64) }

// copy is direction dir: from src to dst until src's end or a failure.
func (r *relay) copy(dir int, dst, src net.Conn, n *atomic.Int64, c counter, small []byte) {
	buf := small
	var big *[copyBufSize]byte
	defer func() {
		if big != nil {
			copyBufs.Put(big)
		}
	}()
	for {
		m, err := src.Read(buf)
		if m > 0 {
			n.Add(int64(m))
			c.Add(float64(m))
			r.active.Store(int64(time.Since(r.start)))
			if _, werr := dst.Write(buf[:m]); werr != nil {
				r.fail()
				return
			}
		}
		if err != nil {
			switch {
			case err == io.EOF:
				r.closed[dir].Store(true)
				closeWrite(dst) // the other direction goes on
			case r.lateReset(dir, dst, err):
			default:
				r.fail()
			}
			return
		}
		switch {
		case m == len(buf) && big == nil:
			big = copyBufs.Get().(*[copyBufSize]byte)
			buf = big[:]
		case m < len(small) && big != nil:
			copyBufs.Put(big)
			big, buf = nil, small
		}
	}
}

// lateReset reports whether err, src's read error in direction dir, is a
// reset that came after the other side (dst) had closed in order with
// nothing left to send: its direction is done, or its end waits unread
// (rawio.Closed) and the other direction reads it next. TCP resets a
// connection closed with bytes unread, and at the end of an exchange those
// are often only the other side's goodbye: a TLS close_notify that crossed
// the closing side's own, between its close_notify and its close(2). The
// other side had said all it had to and closed, and this one's reset is
// its close: the relay ends ok, not reset (docs/metrics.md), and the
// reset is still passed on when it closes. Bytes the other side sent that
// do not reach this one still fail it: the other direction's write fails.
// The one end it counts wrong: a side that resets while still sending
// after the other closed (an upload cut short after the server's
// half-close) ends ok too; the other side still gets the reset.
func (r *relay) lateReset(dir int, dst net.Conn, err error) bool {
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		return false
	}
	if !r.closed[1-dir].Load() && !rawio.Closed(dst) {
		return false
	}
	r.late.Store(true)
	return true
}

// fail ends both directions with a reset: a side that failed cannot be
// told apart from one that went away, and the other side must learn.
func (r *relay) fail() {
	r.failed.Store(true)
	r.abort()
}

func (r *relay) abort() {
	r.once.Do(func() {
		abort(r.client)
		abort(r.up)
	})
}

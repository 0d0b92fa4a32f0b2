package outbound

import (
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

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
	once           sync.Once
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
		r.copy(r.up, r.client, &r.sent, r.bytes.Sent, r.small[0][:])
	}()
	r.copy(r.client, r.up, &r.received, r.bytes.Received, r.small[1][:])
	wg.Wait()
	t.Stop()
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

func (r *relay) copy(dst, src net.Conn, n *atomic.Int64, c counter, small []byte) {
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
			if err == io.EOF {
				closeWrite(dst) // the other direction goes on
			} else {
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

package outbound

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/internal/netconn"
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
	if l, ok := netconn.Find[interface{ SetLinger(int) error }](c); ok {
		_ = l.SetLinger(0)
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
	// side is the side whose connection failed first (sideClient,
	// sideServer; 0 while none did): the reset is the other side's news.
	side atomic.Int32
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
				r.failAt(1 - dir)
				return
			}
		}
		if err != nil {
			switch {
			case err == io.EOF && !r.closed[1-dir].Load() && netconn.WasReset(src) && !r.closed[1-dir].Load():
				// A reset whose error the other direction's write took:
				// the app must not read it as an orderly end. (Once this
				// side has passed a half-close on to src, src ends in
				// the state a reset leaves too: closed[1-dir] is set
				// before that half-close goes, so it is read again after
				// the state; the first read spares the system call when
				// it is set already. Read before only, it missed a
				// half-close that came between, and an orderly end of
				// both sides was a reset, about 1 relay in 2,000 where
				// the server closed first: TestRelayServerClosesFirst.)
				r.failAt(dir)
			case err == io.EOF:
				r.closed[dir].Store(true)
				closeWrite(dst) // the other direction goes on
			case r.lateReset(dir, dst, err):
			default:
				r.failAt(dir)
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

// Sides of a relay, for relay.side.
const (
	sideClient = 1
	sideServer = 2
)

// failAt ends both directions with a reset, as the failure of the side
// read by direction dir (0: the client, 1: the server): a side that
// failed cannot be told apart from one that went away, and the other side
// must learn. The first failure names the side; the others follow from
// the abort.
func (r *relay) failAt(dir int) {
	r.side.CompareAndSwap(0, int32(dir+1))
	r.failed.Store(true)
	r.abort()
}

func (r *relay) abort() {
	r.once.Do(func() {
		abort(r.client)
		abort(r.up)
	})
}

// Upgraded is how an upgraded connection's relay ended (RelayUpgraded).
type Upgraded struct {
	// Sent and Received are the bytes the client sent to the upstream
	// after the 101 (those it had sent behind the request's head
	// included), and the bytes it received.
	Sent, Received int64
	// Result is RelayOK, RelayReset or RelayIdleTimeout, as a tunnel's.
	Result string
	// ClientFailed: the result is RelayReset and the client's side failed
	// first (it reset, or could not be written to): the app's outbound,
	// the caller's inbound; otherwise a reset is the upstream's.
	ClientFailed bool
}

// RelayUpgraded passes resp, the upstream's 101 to an upgrade request,
// to the client of w (hijacked with HijackEarly: the bytes the client
// sent behind the request's head go first) and relays the switched
// connection both ways with the relay of tunnels and opaque relays (Relay:
// an orderly end passed on as a half-close, a reset on one side passed on
// to the other as a reset, no byte either way for idle closes both),
// counting its bytes in bytes. up is the upstream connection resp came on
// (UpstreamConn). It closes both connections. An error is a client whose
// connection could not be taken or written the 101: nothing was relayed,
// and the caller closes up.
func RelayUpgraded(w http.ResponseWriter, resp *http.Response, up net.Conn, bytes *telemetry.TCPBytes, idle time.Duration) (Upgraded, error) {
	client, brw, err := HijackEarly(w)
	if err != nil {
		return Upgraded{}, err
	}
	// As the ReverseProxy writes it (handleUpgradeResponse): the
	// upstream's fields after what the handler set, no body. A 101 says
	// Connection: Upgrade, whatever the handler meant to close.
	h := w.Header()
	delete(h, "Connection")
	for k, vv := range resp.Header {
		h[k] = append(h[k], vv...)
	}
	head := *resp
	head.Header, head.Body = h, nil
	err = head.Write(brw)
	if err == nil {
		err = brw.Flush()
	}
	if err != nil {
		abort(client)
		return Upgraded{}, err
	}
	if idle <= 0 {
		idle = DefaultTCPIdleTimeout
	}
	rl := &relay{client: client, up: up, bytes: bytes}
	var u Upgraded
	u.Sent, u.Received, u.Result = rl.run(idle)
	u.ClientFailed = u.Result == RelayReset && rl.side.Load() == sideClient
	return u, nil
}

// upstreamConnKey finds an upgrade request's upstreamConn in its context.
type upstreamConnKey struct{}

// upstreamConn is the connection an upgrade request went out on, as
// http.Transport's ClientTrace reports it (GotConn).
type upstreamConn struct{ c atomic.Pointer[net.Conn] }

// TraceUpstreamConn returns ctx noting, for UpstreamConn, the connection
// http.Transport sends the request with ctx on: an upgrade request's,
// whose 101 RelayUpgraded relays. Only upgrade requests pay its
// allocations.
func TraceUpstreamConn(ctx context.Context) context.Context {
	u := &upstreamConn{}
	ctx = context.WithValue(ctx, upstreamConnKey{}, u)
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		c := i.Conn
		u.c.Store(&c)
	}})
}

// UpstreamConn returns the switched upstream connection of resp, a 101
// from http.Transport to a request whose context TraceUpstreamConn made:
// its reads go through resp.Body (the bytes the transport read past the
// 101's head first, then the connection), the rest to the connection. Nil
// when it is not known.
func UpstreamConn(resp *http.Response) net.Conn {
	if resp.Body == nil || resp.Request == nil {
		return nil
	}
	u, ok := resp.Request.Context().Value(upstreamConnKey{}).(*upstreamConn)
	if !ok {
		return nil
	}
	c := u.c.Load()
	if c == nil || *c == nil {
		return nil
	}
	return &switchedConn{Conn: *c, r: resp.Body}
}

// switchedConn is an upstream connection after its 101, read through
// the transport's response body.
type switchedConn struct {
	net.Conn
	r io.Reader
}

func (c *switchedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Unwrap gives abort and rawio the TCP connection.
func (c *switchedConn) Unwrap() net.Conn { return c.Conn }

// CloseWrite passes the client's orderly end on as a half-close.
func (c *switchedConn) CloseWrite() error { return netconn.CloseWrite(c.Conn) }

package inbound

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/minimesh/minimesh/internal/connlimit"
	"github.com/minimesh/minimesh/internal/netconn"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/proxy/transparent"
)

// The inbound listener is reached by every caller of the pod, and each
// connection holds one of its places (--max-inbound-connections): a
// connection on which nothing happens must give its place back in a time
// of the sidecar's choosing, not of the caller's. Before 2026-12-06 one
// caller's 1,030 silent connections were relayed as no-data with the 1 h
// idle limit, and a request whose body never came had no limit at all:
// every other caller was reset at the cap.

// DefaultNoDataIdleTimeout is the time an inbound connection has, from
// its accept, for its first byte either way; --inbound-first-byte-timeout
// sets it (Config.NoDataIdleTimeout). Protocol detection waits that long
// for the caller's first bytes (NewServer): a caller on the network may
// connect well before its first request (Envoy's and Linkerd's
// preconnect and pool warm-up, a CPU-throttled caller), and before
// 2026-12-06 the outbound listener's 1 s made such a connection a blind
// relay, without the HTTP handling, metrics and limits of its requests.
// Linkerd's inbound detection waits 10 s, Envoy's http_inspector 15 s. A
// caller silent for all of it is closed, counted idle-timeout, without a
// connection to the app (noDataEnd); one that closed without a byte is
// relayed, the app's first byte due within what is left. So a
// server-speaks-first port (MySQL, SMTP) must be in --opaque-ports,
// relayed at once without detection: elsewhere its greeting would wait
// for a caller who waits for it. As Go's HTTP server closes a new
// connection without a request after its header timeout: the same 10 s
// (sidecar.ReadHeaderTimeout).
const DefaultNoDataIdleTimeout = 10 * time.Second

// resultEvicted is how a connection ended that the inbound cap closed to
// give its place to a newcomer (connlimit's Share): the result of
// minimesh_tcp_connections_total{direction="inbound"} and the access
// log's error, for a relay and an upgraded connection; a request it cut
// is recorded as 503 with it (evictedRequest), as the drain's cut is 503
// shutdown. Before 2026-12-06 an eviction read as a reset (or, for a
// request, the caller gone, 499): the sidecar's own limit at work could
// not be told from the network's failures.
const resultEvicted = "evicted"

// evictedResult is result, or resultEvicted where it is the reset that
// the eviction of the caller's connection c (its close under the relay)
// ended the relay in.
func evictedResult(c net.Conn, result string) string {
	if result == outbound.RelayReset && c != nil && connlimit.Evicted(c) {
		return resultEvicted
	}
	return result
}

// evictedRequest records a request that an eviction of its caller's
// connection cut, which reads as the caller gone (499), as 503 evicted.
func evictedRequest(st *reqState) {
	if st.code == statusClientClosed && st.errKind == "" && st.c.caller != nil && connlimit.Evicted(st.c.caller) {
		st.code, st.errKind = http.StatusServiceUnavailable, resultEvicted
	}
}

// withCaller is the inbound server's ConnContext for a redirected
// connection: WithOriginalDst, and the caller's connection kept with it,
// so that a request can tell whether the cap cut it (evictedRequest).
func (h *Handler) withCaller(ctx context.Context, tc *transparent.Conn) context.Context {
	return h.withConn(ctx, tc.Original, tc)
}

// noDataIdle is Config.NoDataIdleTimeout, or its default.
func (h *Handler) noDataIdle() time.Duration {
	if d := h.cfg.NoDataIdleTimeout; d > 0 {
		return d
	}
	return DefaultNoDataIdleTimeout
}

// bodyIdle is Config.RequestBodyTimeout as the handler applies it: 0
// when there is no limit.
func (h *Handler) bodyIdle() time.Duration {
	switch d := h.cfg.RequestBodyTimeout; {
	case d == 0:
		return outbound.DefaultRequestBodyTimeout
	case d < 0:
		return 0
	default:
		return d
	}
}

// noDataEnd is the result a no-data connection ends with before the app
// is dialled, or "" when it is relayed: the cap closed it during
// detection (evicted), the drain did (shutdown), its caller reset it
// (reset: the app is not connected to for nothing, as Envoy's and
// Linkerd's detection do not), or its caller sent nothing for all of
// NoDataIdleTimeout (idle-timeout): nothing has been said on it that a
// relay would carry.
func (h *Handler) noDataEnd(c *transparent.Conn) string {
	switch {
	case connlimit.Evicted(c):
		return resultEvicted
	case h.draining.Load():
		return outbound.RelayShutdown
	case c.ReadErr != nil:
		return outbound.RelayReset
	case c.Detect >= h.noDataIdle():
		return outbound.RelayIdleTimeout
	}
	return ""
}

// relay relays c to up (outbound.Relay). A no-data connection (its
// caller closed without a byte) is relayed under what detection left of
// NoDataIdleTimeout until its first byte either way, and is meanwhile a
// connection that waits, for the cap (connlimit's Share: at the cap a
// newcomer from another caller may take its place): nothing has been
// said on it that closing it would cut.
func (h *Handler) relay(c *transparent.Conn, up net.Conn, m *telemetry.Destination) (sent, received int64, result string) {
	if c.Protocol != transparent.NoData {
		return outbound.Relay(c, up, m.TCP(), h.cfg.TCPIdleTimeout)
	}
	f := &firstByte{h: h, c: c}
	if h.cfg.ConnState != nil {
		h.cfg.ConnState(c, http.StateNew)
	}
	f.t = time.AfterFunc(h.noDataIdle()-c.Detect, func() {
		if f.state.CompareAndSwap(fbWaiting, fbExpired) {
			outbound.Abort(c)
			outbound.Abort(up)
		}
	})
	sent, received, result = outbound.Relay(&firstByteConn{Conn: c, f: f}, &firstByteConn{Conn: up, f: f}, m.TCP(), h.cfg.TCPIdleTimeout)
	f.t.Stop()
	switch {
	case f.state.Load() == fbExpired:
		result = outbound.RelayIdleTimeout
	case result == outbound.RelayReset && f.state.Load() == fbWaiting && h.draining.Load():
		// The drain closed it (connlimit.Listener.Drain: a connection
		// that waits), with nothing said on it.
		result = outbound.RelayShutdown
	}
	return sent, received, result
}

// States of firstByte.
const (
	fbWaiting int32 = iota // no byte yet either way
	fbMoved                // a byte moved: the relay's own idle limit
	fbExpired              // NoDataIdleTimeout ran out first: closed
)

// firstByte follows a no-data relay until its first byte.
type firstByte struct {
	h     *Handler
	c     *transparent.Conn
	t     *time.Timer
	state atomic.Int32
}

// moved ends the short limit at the first byte: the connection is a
// relay as any other from then on (for the cap and the drain too).
func (f *firstByte) moved() {
	if f.state.CompareAndSwap(fbWaiting, fbMoved) {
		f.t.Stop()
		if f.h.cfg.ConnState != nil {
			f.h.cfg.ConnState(f.c, http.StateHijacked)
		}
	}
}

// firstByteConn is one side of a no-data relay: its reads tell
// firstByte of the first byte. Unwrap and CloseWrite give the relay the
// connection's own (a reset, a half-close).
type firstByteConn struct {
	net.Conn
	f *firstByte
}

func (c *firstByteConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.f.state.Load() == fbWaiting {
		c.f.moved()
	}
	return n, err
}

func (c *firstByteConn) Unwrap() net.Conn  { return c.Conn }
func (c *firstByteConn) CloseWrite() error { return netconn.CloseWrite(c.Conn) }

// errBodyIdle is a request body whose caller sent nothing more for
// RequestBodyTimeout while the app waited for it.
var errBodyIdle = errors.New("the caller sent no request body bytes within --request-body-timeout")

// watchBody bounds st's request body (st.in, set) by RequestBodyTimeout,
// as the outbound listener bounds the app's (--request-body-timeout): a
// read of it that waits that long for the caller fails with errBodyIdle,
// the connection's read is cut, and serveError answers 408. It counts
// only while the app's side waits for a byte from the caller (a read
// under way), so an app slow to read its body is not blamed on the
// caller, and ends once the app has answered (answered) or the body has
// ended. It returns the watch's stop, or nil without a limit.
func (h *Handler) watchBody(st *reqState) (stop func()) {
	idle := h.bodyIdle()
	if idle <= 0 || st.in.ReadCloser == nil {
		return nil
	}
	b := &bodyWatch{ReadCloser: st.in.ReadCloser, idle: idle, rw: st.out.ResponseWriter, base: time.Now()}
	st.in.ReadCloser = b
	// Armed once b.t is set: fire resets it.
	b.t = time.AfterFunc(math.MaxInt64, b.fire)
	b.t.Reset(idle)
	return func() { b.t.Stop() }
}

// bodyWatch is a request body under watchBody.
type bodyWatch struct {
	io.ReadCloser
	idle time.Duration
	rw   http.ResponseWriter
	t    *time.Timer
	base time.Time // monotonic origin of waiting
	// waiting is when the read under way began, as time since base + 1
	// (0: no read under way).
	waiting atomic.Int64
	done    atomic.Bool // the body ended or the app answered
	expired atomic.Bool
}

func (b *bodyWatch) Read(p []byte) (int, error) {
	b.waiting.Store(int64(time.Since(b.base)) + 1)
	n, err := b.ReadCloser.Read(p)
	b.waiting.Store(0)
	if err != nil {
		if b.expired.Load() {
			return n, errBodyIdle
		}
		if err == io.EOF {
			b.done.Store(true)
		}
	}
	return n, err
}

// answered ends the watch: the app has answered, and may be listening
// to a caller that streams quietly (a bidirectional stream).
func (b *bodyWatch) answered() { b.done.Store(true) }

func (b *bodyWatch) fire() {
	if b.done.Load() {
		return
	}
	left := b.idle
	if w := b.waiting.Load(); w != 0 {
		left = b.idle - (time.Since(b.base) - time.Duration(w-1))
	}
	if left > 0 {
		b.t.Reset(left)
		return
	}
	b.expired.Store(true)
	// The read under way ends now; the caller's connection closes after
	// the 408 (serveError's Connection: close).
	_ = http.NewResponseController(b.rw).SetReadDeadline(time.Unix(1, 0))
}

// answeredBody ends st's body watch, if any: the app's response headers
// have come.
func answeredBody(st *reqState) {
	if b, ok := st.in.ReadCloser.(*bodyWatch); ok {
		b.answered()
	}
}

package xds

import (
	"context"
	"log/slog"
	"sync"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/minimesh/minimesh/internal/echo"
)

// DefaultSendTimeout is how long a stream may leave a response untaken
// while its connection writes nothing (Server.SendTimeout): a client
// that stops reading makes the server hold the response (twice its
// size: the encoding queued in the transport, the message the xDS server
// keeps), 1.15 MB a stream for 19,000 endpoints, for as long as the
// stream lasts, and a grpc-go
// client answers keepalive pings while it does. A minimesh sidecar
// acknowledges a response once applied, at the latest 5 s after for a
// NACK it repeats (xdsclient's backoff), an Envoy at once.
const DefaultSendTimeout = 10 * time.Second

// SendTimeouts is the option that closes, with DeadlineExceeded, a stream
// with a response not taken (its send has not returned, or the client
// has not acknowledged it: ACK or NACK, a request naming its nonce)
// when the send timeout (SendTimeout; 0: DefaultSendTimeout) has passed
// since the later of that response's send and its connection's last
// write. Progress, not age: grpc-go queues a whole message at once
// whatever the client's window, so a response's age includes its time
// on the wire, and many sidecars served at once over a slow link (a
// controller restart) each took longer than the timeout while their
// bytes kept moving; closing them made them reconnect and be sent
// everything again, forever. A client
// that stops reading lets its window close and its connection stops
// writing; one that reads but never acknowledges is closed the timeout
// after its last bytes went out. l is the listener the server is served
// on, which knows each connection's last write; a stream whose
// connection it does not know is judged by its response's age. Only a
// write made while at most one stream of the connection has a response
// pending counts as progress: otherwise a client reading on one stream
// kept up to 99 that never read open on the same connection. A sidecar
// holds one stream on its connection and never shares; an Envoy without
// ADS (a stream a type) shares for its first, small, responses, judged
// by their age. Each close is counted in
// minimesh_xds_send_timeouts_total and logged with the peer.
func (s *Server) SendTimeouts(l *WriteTracker, log *slog.Logger, reg prometheus.Registerer) (grpc.ServerOption, error) {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "minimesh_xds_send_timeouts_total",
		Help: "xDS streams closed because a response was not sent and acknowledged while the connection wrote nothing for the send timeout (docs/controlplane.md)."})
	if err := reg.Register(c); err != nil {
		return nil, err
	}
	return grpc.ChainStreamInterceptor(s.sendTimeouts(l, func(ctx context.Context, err error) {
		c.Inc()
		addr := "unknown"
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			addr = p.Addr.String()
		}
		log.Warn("xds: closed a stream that did not take its response", "peer", addr, "err", echo.Clip(err.Error()))
	})), nil
}

// sendTimeouts is the interceptor of SendTimeouts; closed hears of each
// stream it closes.
func (s *Server) sendTimeouts(l *WriteTracker, closed func(context.Context, error)) grpc.StreamServerInterceptor {
	timeout := s.SendTimeout
	if timeout <= 0 {
		timeout = DefaultSendTimeout
	}
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		w := &watchedStream{ServerStream: ss, ctx: ctx, timeout: timeout,
			pending: map[string][]sentAt{}, stuck: make(chan struct{})}
		if p, ok := peer.FromContext(ss.Context()); ok {
			w.conn = l.conn(p.LocalAddr, p.Addr)
		}
		defer w.stop()
		done := make(chan error, 1)
		go func() { done <- handler(srv, w) }()
		select {
		case err := <-done:
			return err
		case <-w.stuck:
		}
		// The handler may be blocked in SendMsg, which only the end of
		// the transport's stream releases, and that comes when this
		// returns: grpc-go then resets the stream, drops what it had
		// queued, and the handler's send and receive fail, so that it
		// returns and its callbacks see the stream close.
		cancel()
		err := status.Errorf(codes.DeadlineExceeded, "a response not taken (sent and acknowledged) and nothing written to the connection for %v: the stream is closed", timeout)
		closed(ss.Context(), err)
		return err
	}
}

// sentAt is a response not acknowledged yet and when it was sent.
type sentAt struct {
	nonce string
	at    time.Time
}

// watchedStream is a stream whose responses have a deadline: while one
// is not sent and acknowledged, its connection must write within timeout
// of the response's send and then of each write, or stuck is closed.
type watchedStream struct {
	grpc.ServerStream
	ctx     context.Context
	timeout time.Duration
	conn    *trackedConn // nil: not known, the responses' age is judged

	mu sync.Mutex
	// pending are the responses of each type not acknowledged yet, the
	// oldest first: a client acknowledges them in order, and one behind
	// by a push or two under churn is not stuck.
	pending map[string][]sentAt
	sending int       // SendMsg calls not returned
	since   time.Time // when the oldest of those began
	timer   *time.Timer
	stuck   chan struct{}
	fired   bool
	// counted: the stream is in conn.pending; ended: it has stopped and
	// is counted no more, whatever its handler still sends.
	counted, ended bool
}

// Context is the stream's, ended when the stream is closed for a
// timeout (the xDS server's receiving goroutine stops on it).
func (w *watchedStream) Context() context.Context { return w.ctx }

func (w *watchedStream) SendMsg(m any) error {
	typeURL, nonce := responseOf(m)
	w.mu.Lock()
	w.sending++
	// Counted before the send time is taken and the response queued, so
	// that no write of it is credited to another stream alone before.
	w.settle()
	now := time.Now()
	if nonce != "" {
		w.pending[typeURL] = append(w.pending[typeURL], sentAt{nonce, now})
	}
	if w.sending == 1 {
		w.since = now
	}
	w.arm(now)
	w.mu.Unlock()
	err := w.ServerStream.SendMsg(m)
	w.mu.Lock()
	w.sending--
	w.settle()
	w.mu.Unlock()
	return err
}

func (w *watchedStream) RecvMsg(m any) error {
	if err := w.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	typeURL, nonce := requestOf(m)
	if nonce == "" {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for t, sent := range w.pending {
		// A stream of one type (not ADS) may leave the type out.
		if typeURL != "" && t != typeURL {
			continue
		}
		for i, r := range sent {
			if r.nonce == nonce {
				if rest := sent[i+1:]; len(rest) > 0 {
					w.pending[t] = rest
				} else {
					delete(w.pending, t)
				}
				break
			}
		}
	}
	w.settle()
	return nil
}

// settle keeps the stream counted in its connection's pending streams
// exactly while it has a response not taken and has not stopped. The
// caller holds mu.
func (w *watchedStream) settle() {
	if w.conn == nil {
		return
	}
	want := !w.ended && (w.sending > 0 || len(w.pending) > 0)
	if want == w.counted {
		return
	}
	w.counted = want
	if want {
		w.conn.pending.Add(1)
	} else {
		w.conn.pending.Add(-1)
	}
}

// clockStart is when the stream's time to take its responses began: the
// later of the oldest response's send and the connection's last write;
// ok is false when no response is pending. The caller holds mu.
func (w *watchedStream) clockStart() (at time.Time, ok bool) {
	at, ok = w.oldest()
	if !ok || w.conn == nil {
		return at, ok
	}
	if last, wrote := w.conn.lastWrite(); wrote && last.After(at) {
		at = last
	}
	return at, true
}

// oldest is when the oldest response not taken was sent; ok is false
// when there is none. The caller holds mu.
func (w *watchedStream) oldest() (at time.Time, ok bool) {
	if w.sending > 0 {
		at, ok = w.since, true
	}
	for _, sent := range w.pending {
		if len(sent) > 0 && (!ok || sent[0].at.Before(at)) {
			at, ok = sent[0].at, true
		}
	}
	return at, ok
}

// arm makes sure a check is due when the stream's time is up (clockStart);
// one timer a stream, re-armed only while something is pending: a
// connection that keeps writing costs one check a timeout, not one a
// write. The caller holds mu.
func (w *watchedStream) arm(now time.Time) {
	if w.timer != nil || w.fired {
		return
	}
	at, ok := w.clockStart()
	if !ok {
		return
	}
	w.timer = time.AfterFunc(at.Add(w.timeout).Sub(now), w.check)
}

func (w *watchedStream) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timer = nil
	if w.fired {
		return
	}
	now := time.Now()
	if at, ok := w.clockStart(); ok && now.Sub(at) >= w.timeout {
		w.fired = true
		close(w.stuck)
		return
	}
	w.arm(now)
}

func (w *watchedStream) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fired = true
	w.ended = true
	w.settle()
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
}

// responseOf is the type and nonce of an xDS response ("" for another
// message).
func responseOf(m any) (typeURL, nonce string) {
	switch r := m.(type) {
	case *discovery.DiscoveryResponse:
		return r.GetTypeUrl(), r.GetNonce()
	case *discovery.DeltaDiscoveryResponse:
		return r.GetTypeUrl(), r.GetNonce()
	}
	return "", ""
}

// requestOf is the type and the nonce a request acknowledges.
func requestOf(m any) (typeURL, nonce string) {
	switch r := m.(type) {
	case *discovery.DiscoveryRequest:
		return r.GetTypeUrl(), r.GetResponseNonce()
	case *discovery.DeltaDiscoveryRequest:
		return r.GetTypeUrl(), r.GetResponseNonce()
	}
	return "", ""
}

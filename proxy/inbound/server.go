package inbound

import (
	"context"
	"errors"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/minimesh/minimesh/internal/connlimit"
	"github.com/minimesh/minimesh/proxy/leanhttp"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/transparent"
)

// ServerConfig configures the inbound listener.
type ServerConfig struct {
	// OpaquePorts are relayed at once, without detection: the app's
	// server-speaks-first ports (its PostgreSQL, say) greet the caller
	// without delay. The outbound listener's list.
	OpaquePorts *transparent.Ports
	// DetectTimeout bounds protocol detection (0: the handler's
	// NoDataIdleTimeout, --inbound-first-byte-timeout). Not the outbound
	// listener's 1 s, whose reason (an app on the same host sends as soon
	// as it connects) does not hold for callers on the network: a pool's
	// warm-up connection, or a CPU-throttled caller, may send its first
	// request seconds after connecting (limits.go).
	DetectTimeout time.Duration
	// MaxHeaderBytes, ReadHeaderTimeout and IdleTimeout are the HTTP
	// server's, as on the outbound listener.
	MaxHeaderBytes    int
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	ErrorLog          *log.Logger
}

// Server is the inbound listener: it serves only connections that
// iptables redirected to it, each forwarded to its original destination.
// A connection made to the listener itself (its original destination is
// the listener's own address, or it has none) was not redirected: it is
// reset at once, so that listening on every address (:15006) opens
// nothing beyond what the rules redirect.
type Server struct {
	h   *Handler
	ln  *connlimit.Listener
	d   *transparent.Dispatcher
	srv *http.Server
}

// NewServer serves ln (capped by connlimit) with h.
func NewServer(ln *connlimit.Listener, h *Handler, cfg ServerConfig) *Server {
	s := &Server{h: h, ln: ln}
	if h.cfg.ConnState == nil {
		// A no-data relay waits, for the cap, until its first byte
		// (Handler.relay).
		h.cfg.ConnState = ln.ConnState
	}
	detect := cfg.DetectTimeout
	if detect <= 0 {
		detect = h.noDataIdle()
	}
	s.d = transparent.New(transparent.Config{
		OpaquePorts:   cfg.OpaquePorts,
		DetectTimeout: detect,
		OnTCP:         h.ServeTCP,
		// A connection under detection stays new for the cap and the
		// drain (connlimit): silent, it waits as a new HTTP connection
		// does, and a newcomer at the cap or the drain's sweep may close
		// it; ServeTCP takes a relay as its own (hijacked).
		Hijacked: func(net.Conn) {},
		// A request line longer than detection reads is still HTTP, for
		// MaxHeaderBytes to bound.
		LongRequestLines: true,
		// Its debug line per connection says which listener it is from.
		Logger: h.log.With("listener", "inbound"),
	})
	s.srv = &http.Server{
		Handler:           h,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		ConnState: func(c net.Conn, st http.ConnState) {
			if tc, ok := transparent.Under(c); ok {
				ln.ConnState(tc.Conn, st)
			}
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := transparent.Under(c); ok {
				return h.withCaller(ctx, tc)
			}
			return ctx
		},
		ErrorLog: cfg.ErrorLog,
	}
	return s
}

// Addr is the listener's address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until the listener is closed, and returns
// that error.
func (s *Server) Serve() error {
	go func() { _ = s.srv.Serve(ownPorts{s.d.HTTP(), s.h}) }()
	ln := s.d.Wrap(s.ln)
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors, say: as http.Server does, wait and
			// try again rather than stop serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.h.log.Warn("inbound accept failed", "error", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.refuse(c)
	}
}

// refuse resets a connection that was not redirected: one made to the
// inbound listener itself.
func (s *Server) refuse(c net.Conn) {
	portNum := 0
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		portNum = a.Port
	}
	s.h.log.Debug("connection to the inbound listener itself refused: it serves only redirected connections",
		"client", c.RemoteAddr().String(), "local", c.LocalAddr().String())
	// Counted before the reset: whoever sees the reset sees the count.
	s.h.portMetric(uint16(portNum)).TCPConnection(resultForbidden)
	outbound.Abort(c)
}

// Close closes the listener: new connections are refused (without a
// listener the kernel resets what the rules redirect to it).
func (s *Server) Close() error { return s.ln.Close() }

// Drain closes the kept-alive connections as they become idle (see
// connlimit.Listener.Drain) and lets requests, relays and upgrades run
// until ctx is done; it returns the number of HTTP connections left.
// Close first.
func (s *Server) Drain(ctx context.Context, grace time.Duration) int {
	s.h.SetDraining(true)
	// Detection may wait 10 s for a silent caller: the sweep, which
	// closes such a connection after grace, runs meanwhile.
	detected := make(chan struct{})
	go func() { s.d.Close(ctx); close(detected) }()
	left := s.ln.Drain(ctx, grace)
	<-detected
	s.h.Drain(ctx)
	s.srv.Close()
	s.h.CloseIdleConnections()
	return left
}

// ownPorts takes out of the HTTP server's listener the redirected
// connections whose original destination is one of the sidecar's own
// ports or not one of the pod's addresses (refused), and those of another protocol than HTTP/1.x (HTTP/2
// with prior knowledge: relayed as opaque TCP, as the inbound path has no
// HTTP/2 of its own).
type ownPorts struct {
	net.Listener
	h *Handler
}

func (l ownPorts) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc, ok := c.(*transparent.Conn)
		if ok && tc.Protocol != transparent.HTTP1 {
			go l.h.ServeTCP(tc)
			continue
		}
		if ok && !l.h.refused(tc.Original, c.RemoteAddr()) {
			// net/http takes an HTTP/1.0 request's Transfer-Encoding for
			// none, and would pass its body on as the next request to the
			// app: the guard refuses it (leanhttp.TE10Guard).
			return leanhttp.GuardConn(c), nil
		}
		if ok {
			l.h.forbiddenMetric(tc.Original).TCPConnection(resultForbidden)
		}
		outbound.Abort(c)
	}
}

package sidecar

import (
	"context"
	"fmt"
	"log"
	"net"

	"github.com/minimesh/minimesh/internal/connlimit"
	"github.com/minimesh/minimesh/proxy/inbound"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/transparent"
)

// listenInbound binds the inbound listener of capture-inbound
// (docs/interception.md, "Inbound"): it serves what iptables redirects
// into the pod, forwarded to the app, under its own connection cap.
func (s *Sidecar) listenInbound(opaque *transparent.Ports, errLog *log.Logger) error {
	ln, err := net.Listen("tcp", s.cfg.InboundAddr)
	if err != nil {
		return fmt.Errorf("inbound listener: %w", err)
	}
	inLn := newInboundLimit(ln.(*net.TCPListener), s.cfg)
	s.inLn = inLn
	// Nothing sent through the sidecar may reach its own listeners, this
	// one included (the pod's own IP:15006, say).
	s.outbound.AddListener(inLn.Addr())
	var own []uint16
	for _, a := range []net.Addr{s.outLn.Addr(), s.adminLn.Addr(), inLn.Addr()} {
		if ta, ok := a.(*net.TCPAddr); ok {
			own = append(own, uint16(ta.Port))
		}
	}
	h := inbound.New(inbound.Config{
		ServiceName:    s.cfg.ServiceName,
		Metrics:        s.metrics,
		Tracing:        s.tracing,
		AccessLog:      s.access,
		Logger:         s.log,
		OwnPorts:       own,
		ConnectTimeout: s.cfg.ConnectTimeout,
		TCPIdleTimeout: s.cfg.TCPIdleTimeout,
		// As the outbound listener's: a caller that stops sending its
		// request body frees its place after this.
		RequestBodyTimeout: s.cfg.RequestBodyTimeout,
		NoDataIdleTimeout:  s.cfg.InboundFirstByteTimeout,
	})
	s.inbound = inbound.NewServer(inLn, h, inbound.ServerConfig{
		// Detection waits for the caller's first bytes as long as the
		// first-byte limit (inbound.DefaultNoDataIdleTimeout), not the
		// outbound listener's DetectTimeout: callers on the network may
		// connect long before their first request.
		OpaquePorts:       opaque,
		MaxHeaderBytes:    outbound.MaxHeaderBytes,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		ErrorLog:          errLog,
	})
	s.metrics.Listener("inbound", inLn.Open, inLn.Refused)
	s.metrics.ListenerEvicted("inbound", inLn.Evicted)
	return nil
}

// newInboundLimit is the inbound listener's cap. Every caller of the pod
// reaches it, so, as the admin listener, it shares its places
// (connlimit.Listener.Share): at the cap a newcomer takes
// the place of a connection waiting for a request (an idle keep-alive
// connection, a silent new one, a relay on which nothing has moved yet),
// one stuck writing to a caller that does not read, or one of the address
// over its fair share, rather than being refused; one address may also be
// held to MaxInboundConnectionsPerSource of them (none by default: one
// caller, a node's ingress, may well keep hundreds of connections to a
// pod, which it could not past a hard share). Before 2026-12-06 it
// was the plain cap: one address holding 1,024 silent connections had
// every other caller reset. The socket buffers stay the kernel's: these
// connections carry the app's traffic.
func newInboundLimit(ln *net.TCPListener, cfg Config) *connlimit.Listener {
	l := connlimit.New(ln, cfg.MaxInboundConnections)
	l.ShareKeepBuffers(cfg.MaxInboundConnectionsPerSource)
	return l
}

// InboundAddr is the inbound listener's bound address ("" without one).
func (s *Sidecar) InboundAddr() string {
	if s.inbound == nil {
		return ""
	}
	return s.inbound.Addr().String()
}

// drainInbound drains the inbound listener (closed already) beside the
// outbound one, within ctx; the channel gets the number of connections
// left.
func (s *Sidecar) drainInbound(ctx context.Context) <-chan int {
	left := make(chan int, 1)
	if s.inbound == nil {
		left <- 0
		return left
	}
	go func() { left <- s.inbound.Drain(ctx, s.cfg.DrainIdleGrace) }()
	return left
}

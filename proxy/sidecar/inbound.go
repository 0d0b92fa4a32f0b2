package sidecar

import (
	"context"
	"fmt"
	"log"
	"net"

	"github.com/minimesh/minimesh/proxy/connlimit"
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
	inLn := connlimit.New(ln.(*net.TCPListener), s.cfg.MaxInboundConnections)
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
	})
	s.inbound = inbound.NewServer(inLn, h, inbound.ServerConfig{
		OpaquePorts:       opaque,
		DetectTimeout:     s.cfg.DetectTimeout,
		MaxHeaderBytes:    outbound.MaxHeaderBytes,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		ErrorLog:          errLog,
	})
	s.metrics.Listener("inbound", inLn.Open, inLn.Refused)
	return nil
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

// Package sidecar assembles the sidecar process: the outbound listener,
// the admin server and the policy source, and their orderly shutdown.
package sidecar

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minimesh/minimesh/internal/connlimit"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/admin"
	"github.com/minimesh/minimesh/proxy/balancer"
	"github.com/minimesh/minimesh/proxy/inbound"
	"github.com/minimesh/minimesh/proxy/leanhttp"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/policywatch"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/proxy/transparent"
	"github.com/minimesh/minimesh/wellknown"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// Config is the sidecar's configuration, from flags.
type Config struct {
	OutboundAddr string
	AdminAddr    string
	PolicyDir    string
	// XDSAddress is the control plane (host:port); its policies win over
	// PolicyDir's once it has answered.
	XDSAddress string
	// XDSInitialTimeout is how long the first answer may take before the
	// sidecar starts serving with PolicyDir's policies or the defaults.
	XDSInitialTimeout time.Duration
	ServiceName       string
	Namespace         string
	Resolve           map[string]string
	ConnectTimeout    time.Duration
	DrainTimeout      time.Duration
	// DrainIdleGrace is how long a drain leaves a connection idle since
	// the drain began before closing it (0: DefaultDrainIdleGrace).
	DrainIdleGrace time.Duration
	// MaxConnections caps the outbound listener's client connections (0:
	// DefaultMaxConnections; negative: no cap). AdminMaxConnections caps
	// the admin listener's (0: DefaultAdminMaxConnections), and
	// AdminMaxConnectionsPerSource one peer address's share of them (0:
	// DefaultAdminMaxConnectionsPerSource).
	MaxConnections               int
	AdminMaxConnections          int
	AdminMaxConnectionsPerSource int
	MaxRequestBody               int64
	// RequestBodyTimeout bounds the wait for the next bytes of a request
	// body (0: outbound.DefaultRequestBodyTimeout; negative: none).
	RequestBodyTimeout time.Duration
	StdTransport       bool
	// Server is the outbound listener's HTTP/1.x server: ServerLean
	// (proxy/leanhttp, the default: the common bodiless request on the
	// connection's goroutine, the rest handed to net/http's) or ServerStd
	// (net/http's alone).
	Server  string
	PodName string
	// OTLPEndpoint is the trace collector (host:port, OTLP/gRPC); empty
	// turns tracing off.
	OTLPEndpoint     string
	TraceSampleRatio float64
	// AccessLog receives one JSON line per request; nil: none.
	AccessLog io.Writer
	Logger    *slog.Logger
	// OpaquePorts are the original destination ports of redirected
	// connections relayed as opaque TCP without detection (nil: the
	// default list, transparent.DefaultOpaquePorts).
	OpaquePorts *transparent.Ports
	// DetectTimeout bounds protocol detection on a connection redirected
	// to the outbound listener (0: transparent.DefaultDetectTimeout).
	DetectTimeout time.Duration
	// TCPIdleTimeout closes an opaque TCP relay, a CONNECT tunnel or an
	// upgraded connection (either listener) idle this long (0:
	// outbound.DefaultTCPIdleTimeout).
	TCPIdleTimeout time.Duration
	// StreamIdleTimeout ends an outbound gRPC call or HTTP/2 body without
	// a content-length that moved no byte either way this long (0:
	// outbound.DefaultStreamIdleTimeout; negative: none).
	StreamIdleTimeout time.Duration

	// InboundAddr is the inbound listener of capture-inbound (empty:
	// none): connections into the pod that iptables redirected, forwarded
	// to the app (proxy/inbound).
	InboundAddr string
	// MaxInboundConnections caps the inbound listener's connections (0:
	// DefaultMaxConnections; negative: no cap).
	MaxInboundConnections int
	// MaxInboundConnectionsPerSource caps one peer address's share of
	// them (0: no cap of its own). At the cap connlimit's Share evictions
	// keep the places fair whatever it is: a newcomer takes the place of
	// a waiting connection or of the address holding the most.
	MaxInboundConnectionsPerSource int
	// InboundFirstByteTimeout is the time an inbound connection has from
	// its accept for a first byte either way, inbound detection included
	// (0: inbound.DefaultNoDataIdleTimeout).
	InboundFirstByteTimeout time.Duration

	// Started, when set, is called once the sidecar has started, its
	// first policies loaded and its listeners serving, just before /ready
	// answers 200: the process's start is over (the binary lets go of the
	// pages only its start touched, internal/exepages).
	Started func()
}

// The values of Config.Server (--server).
const (
	ServerStd  = "std"
	ServerLean = "lean"
)

const (
	// DefaultMaxConnections caps the outbound listener's connections: an
	// app needs a few per destination; a leak or a flood stops here, at
	// about 20 MiB of idle connections (docs/operations.md).
	DefaultMaxConnections = 1024
	// DefaultAdminMaxConnections caps the admin listener's: probes,
	// Prometheus and a person need a handful.
	DefaultAdminMaxConnections = 64
	// DefaultAdminMaxConnectionsPerSource: one peer address (a pod on the
	// network, the kubelet, Prometheus) may hold a quarter of those, so
	// that no one peer shuts the others out (connlimit.Listener.Share).
	DefaultAdminMaxConnectionsPerSource = 16
	// DefaultDrainIdleGrace: a connection idle for this long since the
	// drain began is closed. A client with a request on its way has had
	// its chance to send it (and gets "Connection: close" on its answer).
	DefaultDrainIdleGrace = time.Second

	// IdleTimeout closes a keep-alive connection left idle this long. It
	// is longer than the idle pools of common clients (Go 90 s, curl
	// 118 s, Node 5 s, httpx 5 s, aiohttp 15 s), so that the client, not
	// the sidecar, ends an idle connection: the side that closes an idle
	// connection can race a request the other side is sending on it.
	IdleTimeout = 5 * time.Minute
	// ReadHeaderTimeout bounds the time from a request's first byte to
	// the end of its headers; past it the connection is closed without
	// an answer. An app on loopback writes its headers at once; a
	// connection stuck half way frees its place under the cap after
	// this. Before its first byte a new connection waits as an idle one
	// does, up to IdleTimeout, on the lean server (the default): clients
	// open connections before they have a request for them. net/http's
	// server (--server std) counts a connection's first head from the
	// accept instead, and closes a silent one after this.
	ReadHeaderTimeout = 10 * time.Second
)

// Sidecar is a running sidecar.
type Sidecar struct {
	cfg      Config
	log      *slog.Logger
	metrics  *telemetry.Metrics
	outbound *outbound.Handler
	admin    *admin.Server
	tracing  *telemetry.Tracing
	access   *telemetry.AccessLog

	outLn, adminLn *connlimit.Listener
	// outLn6 is the outbound listener's other loopback (nil: none), where
	// an iptables REDIRECT of IPv6 connections lands.
	outLn6   *connlimit.Listener
	outSrv   *http.Server
	adminSrv *http.Server
	// dispatch takes the redirected connections out of the outbound
	// listeners; redirSrv serves those found to carry HTTP/1.x or h2c.
	dispatch *transparent.Dispatcher
	redirSrv *http.Server
	// outLean and redirLean are the lean loops in front of outSrv and
	// redirSrv (nil: --server=std).
	outLean, redirLean *leanhttp.Server
	// inbound is the inbound listener (nil: none), inLn its connections.
	inbound *inbound.Server
	inLn    *connlimit.Listener

	// endDrain is closed by EndDrain: the drain ends at once.
	endDrain     chan struct{}
	endDrainOnce sync.Once

	kick chan struct{} // Reload's, to the policy directory's watcher

	mu     sync.Mutex
	source policySource
}

// policySource is where the policies in force came from, for
// /debug/config.
type policySource struct {
	// Source is where the policies in force came from: "defaults", "dir"
	// or "xds".
	Source     string    `json:"source"`
	Dir        string    `json:"dir,omitempty"`
	XDS        string    `json:"xds,omitempty"`
	XDSVersion string    `json:"xdsVersion,omitempty"`
	LoadedAt   time.Time `json:"loadedAt,omitzero"`
	LastError  string    `json:"lastError,omitempty"`
	LastErrAt  time.Time `json:"lastErrorAt,omitzero"`
	// EndpointsError is the control plane's last endpoints the sidecar
	// refused, kept apart from LastError: each clears on its own kind's
	// next good apply, so a good policy push does not hide endpoints
	// still refused, nor good endpoints leave a stale error shown.
	EndpointsError string                     `json:"endpointsError,omitempty"`
	EndpointsErrAt time.Time                  `json:"endpointsErrorAt,omitzero"`
	Policies       []*policy.ResiliencePolicy `json:"policies"`
	Namespace      string                     `json:"namespace"`
	Service        string                     `json:"serviceName,omitempty"`
	Version        string                     `json:"version"`
	Loads          int                        `json:"loads"`
	LoadErrors     int                        `json:"loadErrors"`
}

// loaded records a load of policies that is now in force, from source
// ("dir" or "xds").
func (p *policySource) loaded(source string, pols []*policy.ResiliencePolicy, now time.Time) {
	p.Source, p.Policies, p.LoadedAt = source, pols, now
	p.LastError, p.LastErrAt = "", time.Time{}
	p.Loads++
}

// failed records a load that was refused: the last good policies serve on.
func (p *policySource) failed(msg string, now time.Time) {
	p.LastError, p.LastErrAt = msg, now
	p.LoadErrors++
}

// Listen binds the listeners, so that a caller (or a test) knows the
// addresses before Serve.
func Listen(cfg Config) (*Sidecar, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "default"
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 10 * time.Second
	}
	if cfg.DrainIdleGrace <= 0 {
		cfg.DrainIdleGrace = DefaultDrainIdleGrace
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.AdminMaxConnections <= 0 {
		cfg.AdminMaxConnections = DefaultAdminMaxConnections
	}
	if cfg.AdminMaxConnectionsPerSource <= 0 {
		cfg.AdminMaxConnectionsPerSource = DefaultAdminMaxConnectionsPerSource
	}
	if cfg.MaxInboundConnections == 0 {
		cfg.MaxInboundConnections = DefaultMaxConnections
	}
	switch cfg.Server {
	case "":
		cfg.Server = ServerLean
	case ServerStd, ServerLean:
	default:
		return nil, fmt.Errorf("server %q: want %s or %s", cfg.Server, ServerStd, ServerLean)
	}
	s := &Sidecar{cfg: cfg, log: cfg.Logger, metrics: telemetry.New(0), kick: make(chan struct{}, 1), endDrain: make(chan struct{})}
	table := policy.NewTable(nil, cfg.Namespace)
	if cfg.XDSInitialTimeout <= 0 {
		cfg.XDSInitialTimeout = 5 * time.Second
	}
	s.cfg = cfg
	s.source = policySource{Source: "defaults", Dir: cfg.PolicyDir, XDS: cfg.XDSAddress, Policies: table.Policies(), Namespace: cfg.Namespace, Service: cfg.ServiceName, Version: wellknown.Version}
	tracing, err := telemetry.NewTracing(telemetry.TracingConfig{
		Endpoint:    cfg.OTLPEndpoint,
		SampleRatio: cfg.TraceSampleRatio,
		ServiceName: cfg.ServiceName,
		PodName:     cfg.PodName,
		Namespace:   cfg.Namespace,
		Logger:      cfg.Logger,
	}, s.metrics)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	s.tracing = tracing
	if cfg.AccessLog != nil {
		s.access = telemetry.NewAccessLog(cfg.AccessLog)
		s.metrics.AccessLogDropped(s.access.Dropped)
	}
	s.outbound = outbound.New(outbound.Config{
		Namespace:          cfg.Namespace,
		Resolve:            cfg.Resolve,
		ConnectTimeout:     cfg.ConnectTimeout,
		MaxRequestBody:     cfg.MaxRequestBody,
		RequestBodyTimeout: cfg.RequestBodyTimeout,
		StdTransport:       cfg.StdTransport,
		ServiceName:        cfg.ServiceName,
		Metrics:            s.metrics,
		Tracing:            tracing,
		AccessLog:          s.access,
		Logger:             cfg.Logger,
		TCPIdleTimeout:     cfg.TCPIdleTimeout,
		StreamIdleTimeout:  cfg.StreamIdleTimeout,
	}, table)
	s.admin = admin.New(s.metrics.Registry, breakers{s.outbound}, s.debugConfig)
	s.admin.HandleJSON("/debug/endpoints", func() any { return s.outbound.Endpoints() })

	outLn, err := net.Listen("tcp", cfg.OutboundAddr)
	if err != nil {
		return nil, fmt.Errorf("outbound listener: %w", err)
	}
	adminLn, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		outLn.Close()
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	s.outLn = connlimit.New(outLn.(*net.TCPListener), cfg.MaxConnections)
	s.adminLn = connlimit.New(adminLn.(*net.TCPListener), cfg.AdminMaxConnections)
	// Anyone on the pod network reaches it, and the kubelet's probes must
	// get through: no peer holds every place, and at the cap a newcomer
	// takes the place of a connection waiting for a request, stuck
	// writing to a peer that does not read, or of the peer address over
	// its fair share (connlimit.Listener.Share).
	s.adminLn.Share(cfg.AdminMaxConnectionsPerSource)
	// Nothing sent through the sidecar may reach its own listeners.
	s.outbound.AddListener(s.outLn.Addr())
	s.outbound.AddListener(s.adminLn.Addr())
	if alt := otherLoopback(s.outLn.Addr()); alt != "" {
		// iptables REDIRECT sends IPv6 connections to [::1] and IPv4 ones
		// to 127.0.0.1: on a loopback outbound address, the sidecar listens
		// on the other one too where the pod has it, under the same cap.
		if ln, err := net.Listen("tcp", alt); err == nil {
			s.outLn6 = s.outLn.Sibling(ln.(*net.TCPListener))
			s.outbound.AddListener(s.outLn6.Addr())
		} else {
			s.log.Info("outbound listener only on "+s.OutboundAddr()+": redirected connections of the other IP family would be refused", "address", alt, "error", err)
		}
	}
	s.metrics.Listener("outbound", s.outLn.Open, s.outLn.Refused)
	s.metrics.Listener("admin", s.adminLn.Open, s.adminLn.Refused)
	s.metrics.ListenerEvicted("admin", s.adminLn.Evicted)
	if ip := s.outLn.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		s.log.Warn("the outbound proxy listens on a non-loopback address, so it is reachable from the network: anyone who can reach the pod can send requests through it. Listen on loopback (the app's HTTP_PROXY is then http://127.0.0.1:15001)", "outbound", s.OutboundAddr())
	}
	errLog := log.New(serverLog{cfg.Logger}, "", 0)
	s.outSrv = &http.Server{
		Handler:           s.outbound,
		Protocols:         outbound.ServerProtocols(),
		HTTP2:             outbound.ServerHTTP2(),
		MaxHeaderBytes:    outbound.MaxHeaderBytes,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		ConnState:         s.outLn.ConnState,
		ErrorLog:          errLog,
	}
	opaque := cfg.OpaquePorts
	if opaque == nil {
		opaque, _ = transparent.ParsePorts(transparent.DefaultOpaquePorts)
	}
	s.dispatch = transparent.New(transparent.Config{
		OpaquePorts:   opaque,
		DetectTimeout: cfg.DetectTimeout,
		OnTCP: func(c *transparent.Conn) {
			s.outbound.ServeTCP(c, outbound.TCPConn{Original: c.Original, SNI: c.SNI, Protocol: string(c.Protocol)})
		},
		// The sidecar's own upstream connections, redirected back when
		// it does not run as the UID the rules exempt: refused.
		Loop: s.outbound.RefuseLoop,
		// Detection and relays own their connections: the drain leaves
		// them to the handler's (tunnels).
		Hijacked: func(c net.Conn) { s.outLn.ConnState(c, http.StateHijacked) },
		Logger:   cfg.Logger,
	})
	s.redirSrv = &http.Server{
		Handler:           s.outbound.Transparent(),
		Protocols:         outbound.ServerProtocols(),
		HTTP2:             outbound.ServerHTTP2(),
		MaxHeaderBytes:    outbound.MaxHeaderBytes,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		ConnState: func(c net.Conn, st http.ConnState) {
			if tc, ok := transparent.Under(c); ok {
				s.outLn.ConnState(tc.Conn, st)
			}
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := transparent.Under(c); ok {
				return outbound.WithOriginalDst(ctx, tc.Original)
			}
			return ctx
		},
		ErrorLog: errLog,
	}
	if cfg.Server == ServerLean {
		s.outLean = leanhttp.New(s.outSrv)
		s.redirLean = leanhttp.New(s.redirSrv)
		s.outLean.RequestContext = outbound.RequestContext
		s.redirLean.RequestContext = outbound.RequestContext
	}
	if cfg.InboundAddr != "" {
		if err := s.listenInbound(opaque, errLog); err != nil {
			s.outLn.Close()
			if s.outLn6 != nil {
				s.outLn6.Close()
			}
			s.adminLn.Close()
			return nil, err
		}
	}
	s.adminSrv = &http.Server{
		Handler:           s.admin,
		ReadHeaderTimeout: ReadHeaderTimeout,
		// On the pod network no request holds its connection without
		// end: a body trickled in, or answers never read (with the cap's
		// eviction of stuck writers, Share; the profiler's long answers
		// extend these).
		ReadTimeout:  admin.ReadTimeout,
		WriteTimeout: admin.WriteTimeout,
		// As every listener's: net/http's default of 1 MiB let 60
		// connections from the pod network hold 100 MB of headers.
		MaxHeaderBytes: outbound.MaxHeaderBytes,
		// Which connections wait for a request, for the cap (Share).
		ConnState: s.adminLn.ConnState,
		// Prometheus keeps its scrape connection up to 5 minutes idle.
		IdleTimeout: IdleTimeout,
		ErrorLog:    errLog,
	}
	return s, nil
}

// Reload asks for a look at the policy directory now (SIGHUP): useful
// where file events do not arrive, such as some network file systems. It
// never blocks; a look already asked for covers this one.
func (s *Sidecar) Reload() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// OutboundAddr and AdminAddr are the bound addresses.
func (s *Sidecar) OutboundAddr() string { return s.outLn.Addr().String() }
func (s *Sidecar) AdminAddr() string    { return s.adminLn.Addr().String() }

// Handler is the outbound handler, for tests.
func (s *Sidecar) Handler() *outbound.Handler { return s.outbound }

type breakers struct{ h *outbound.Handler }

func (b breakers) Breakers() any                           { return b.h.Breakers() }
func (b breakers) ResetBreaker(dest string) (string, bool) { return b.h.ResetBreaker(dest) }
func (s *Sidecar) debugConfig() any                        { s.mu.Lock(); defer s.mu.Unlock(); return s.source }

// Serve runs until ctx ends, then drains: /ready turns 503, the listener
// closes (new connections are refused, never sent: safe to retry), every
// answer from then on carries "Connection: close", and connections close
// after their answer, or after DrainIdleGrace of idleness, or at
// DrainTimeout. It never closes an idle keep-alive connection at once, as
// http.Server.Shutdown does: a request may already be on its way in.
func (s *Sidecar) Serve(ctx context.Context) error {
	errc := make(chan error, 8)
	go func() { errc <- s.adminSrv.Serve(s.adminLn) }()

	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	var xdsFirst chan struct{}
	if s.cfg.XDSAddress != "" {
		// Start with the control plane's policies if they come in time;
		// otherwise serve with the directory's (or the defaults) and let
		// the control plane's replace them when it answers.
		xdsFirst = make(chan struct{})
		var once sync.Once
		c := &xdsclient.Client{
			Addr: s.cfg.XDSAddress,
			Node: xdsclient.Node(s.cfg.PodName, s.cfg.Namespace, s.cfg.ServiceName),
			Log:  s.log,
			Apply: func(pols []*policy.ResiliencePolicy, version string) error {
				err := s.applyXDS(pols, version)
				if err == nil {
					once.Do(func() { close(xdsFirst) })
				}
				return err
			},
			ApplyEndpoints:  s.applyEndpoints,
			ApplyClusterIPs: s.outbound.SetClusterIPs,
			Refused:         s.refusedXDS,
		}
		go c.Run(watchCtx)
		wait := time.NewTimer(s.cfg.XDSInitialTimeout)
		select {
		case <-xdsFirst:
		case <-wait.C:
			s.log.Warn("no answer from the control plane in time; starting with local policies", "xds", s.cfg.XDSAddress, "waited", s.cfg.XDSInitialTimeout.String())
		case <-ctx.Done():
			wait.Stop()
			return s.stopUnserved("waiting for the control plane's first answer")
		}
		wait.Stop()
	}
	if s.cfg.PolicyDir != "" {
		first := make(chan struct{})
		var once sync.Once
		w := &policywatch.Watcher{Dir: s.cfg.PolicyDir, Kick: s.kick}
		go w.Run(watchCtx, func(r policywatch.Result) {
			s.applyLoad(r)
			once.Do(func() { close(first) })
		})
		select {
		case <-first:
		case <-ctx.Done():
			return s.stopUnserved("waiting for the first policy load")
		}
	}
	if s.outLean != nil {
		go func() { errc <- s.outLean.ServeStd() }()
		go func() { errc <- s.redirLean.ServeStd() }()
		go func() { errc <- s.outLean.Serve(s.dispatch.Wrap(s.outLn)) }()
		if s.outLn6 != nil {
			go func() { errc <- s.outLean.Serve(s.dispatch.Wrap(s.outLn6)) }()
		}
		go func() { errc <- s.redirLean.Serve(s.dispatch.HTTP()) }()
	} else {
		// net/http alone takes an HTTP/1.0 request's Transfer-Encoding for
		// none: the guard refuses it, as the lean loop does (leanhttp.TE10Guard).
		go func() { errc <- s.outSrv.Serve(leanhttp.GuardListener(s.dispatch.Wrap(s.outLn))) }()
		if s.outLn6 != nil {
			go func() { errc <- s.outSrv.Serve(leanhttp.GuardListener(s.dispatch.Wrap(s.outLn6))) }()
		}
		go func() { errc <- s.redirSrv.Serve(leanhttp.GuardListener(s.dispatch.HTTP())) }()
	}
	if s.inbound != nil {
		go func() { errc <- s.inbound.Serve() }()
	}
	outbound6 := ""
	if s.outLn6 != nil {
		outbound6 = s.outLn6.Addr().String()
	}
	if s.cfg.Started != nil {
		s.cfg.Started()
	}
	// The line first: whoever saw /ready answer 200 finds it in the log.
	s.log.Info("sidecar ready", "outbound", s.OutboundAddr(), "outbound_other_loopback", outbound6, "inbound", s.InboundAddr(), "admin", s.AdminAddr(), "policy_dir", s.cfg.PolicyDir, "version", wellknown.Version)
	s.admin.SetReady(true)

	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	}
	s.admin.SetReady(false)
	// The listener closes before answers say "Connection: close": a
	// client told to close would otherwise dial again into a listener
	// about to close, and a connection still in its backlog then is reset
	// with its request, not refused.
	s.closeListeners()
	s.outbound.SetDraining(true)
	s.log.Info("draining", "timeout", s.cfg.DrainTimeout.String(), "connections", s.outLn.Open())
	dctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()
	go func() {
		select {
		case <-s.endDrain:
			s.log.Warn("drain ended early: closing what is left", "connections", s.outLn.Open())
			cancel()
		case <-dctx.Done():
		}
	}()
	// Connections whose protocol is still being detected go on to their
	// server or relay (at most the detection timeout) and drain with them.
	inboundLeft := s.drainInbound(dctx)
	s.dispatch.Close(dctx)
	left := s.outLn.Drain(dctx, s.cfg.DrainIdleGrace)
	s.outbound.Drain(dctx)
	left += <-inboundLeft
	if left > 0 {
		s.log.Warn("drain timeout: closing requests still in flight", "connections", left)
	}
	if dctx.Err() != nil {
		// Upgraded connections (WebSockets) were hijacked from their
		// server, whose Close below does not reach them, and the handlers
		// only waited for them: they are cut here, as the tunnels were,
		// so that their requests end and are recorded before the access
		// log closes, and the process does not wait for them (their lines
		// were lost, and the exit came 2 s late).
		s.outLn.CloseAll()
		if s.inLn != nil {
			s.inLn.CloseAll()
		}
	}
	if s.outLean != nil {
		s.outLean.Close() // and outSrv
		s.redirLean.Close()
	} else {
		s.outSrv.Close()
		s.redirSrv.Close()
	}
	s.adminSrv.Close()
	if !s.outbound.AwaitRequests(2 * time.Second) {
		s.log.Warn("requests still running 2s after their connections were closed: their access log lines are lost")
	}
	s.flushTelemetry()
	s.log.Info("stopped")
	return nil
}

// closeListeners closes the outbound and inbound listeners: new
// connections are refused, never sent.
func (s *Sidecar) closeListeners() {
	s.outLn.Close()
	if s.outLn6 != nil {
		s.outLn6.Close()
	}
	if s.inbound != nil {
		s.inbound.Close()
	}
}

// flushTelemetry exports the spans still queued and writes the access
// log's last lines, side by side and for at most 2 s, before the process
// ends: a collector that is down does not take the log's time, and a
// stdout nobody reads (a full pipe, a blocking log driver) does not hold
// the exit; the lines it did not take count as dropped.
func (s *Sidecar) flushTelemetry() {
	fctx, fcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer fcancel()
	logged := make(chan error, 1)
	go func() {
		if s.access == nil {
			logged <- nil
			return
		}
		logged <- s.access.Shutdown(fctx)
	}()
	if err := s.tracing.Shutdown(fctx); err != nil {
		s.log.Warn("spans not exported at shutdown", "error", err)
	}
	if err := <-logged; err != nil {
		s.log.Warn("access log lines lost at shutdown", "error", err)
	}
}

// EndDrain ends the drain at once, as if --drain-timeout had run out
// (a second SIGTERM or SIGINT): what is still open is closed and recorded
// as cut by the shutdown, the log lines and spans are written, and Serve
// returns. Called before the drain, it makes the drain end as it begins.
func (s *Sidecar) EndDrain() {
	s.endDrainOnce.Do(func() { close(s.endDrain) })
}

// stopUnserved ends a sidecar stopped before it served (SIGTERM while it
// waited for its first policies): its outbound and inbound listeners have
// accepted nothing, so there is nothing to drain, and /ready never said
// 200. Connections waiting in their backlogs are reset, never served.
func (s *Sidecar) stopUnserved(while string) error {
	s.log.Info("stopped before serving, "+while, "outbound", s.OutboundAddr())
	s.closeListeners()
	s.adminSrv.Close()
	s.flushTelemetry()
	return nil
}

// applyLoad puts a good load in force; a bad one is logged, counted and
// shown in /debug/config while the last good policies keep serving.
func (s *Sidecar) applyLoad(r policywatch.Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.source.Source == "xds" {
		// The control plane has answered: its policies are in force, and
		// the directory is only the fallback for a start without it. Its
		// load reloaded nothing, so it is not counted (a broken file
		// counted as an error that /debug/config never showed, a good one
		// as a success that changed nothing); the watcher calls this once
		// per change of the directory (and per SIGHUP), so whoever edited
		// it learns here, at info level, why nothing happened.
		args := []any{"dir", s.cfg.PolicyDir}
		if r.Err != nil {
			args = append(args, "error", r.Err)
		} else {
			args = append(args, "count", len(r.Policies))
		}
		s.log.Info("policy directory not applied: the control plane's policies are in force", args...)
		return
	}
	s.metrics.PolicyReload(r.Err == nil)
	// What the directory holds unread (a key `geo` without its .yaml
	// loads nothing): this line is the only place that can say so.
	var skipped []any
	if len(r.Skipped) > 0 {
		skipped = []any{"skipped", skippedNames(r.Skipped)}
	}
	if r.Err != nil {
		s.source.failed(r.Err.Error(), time.Now())
		s.log.Error("policy load failed; keeping the last good policies", append([]any{"dir", s.cfg.PolicyDir, "error", r.Err}, skipped...)...)
		return
	}
	table := policy.NewTable(r.Policies, s.cfg.Namespace)
	s.outbound.SetPolicies(table)
	s.source.loaded("dir", table.Policies(), time.Now())
	s.log.Info("policies loaded", append([]any{"dir", s.cfg.PolicyDir, "count", len(r.Policies)}, skipped...)...)
}

// skippedNames are the entries a load passed over, as "geo: not .yaml,
// .yml or .json": the log line names the directory already.
func skippedNames(sk []policy.Skipped) []string {
	out := make([]string, len(sk))
	for i, s := range sk {
		out[i] = filepath.Base(s.Path) + ": " + s.Reason
	}
	return out
}

// refusedXDS records a response of the control plane's that the sidecar
// refused (NACKed), whoever refused it (the decoder, applyXDS,
// applyEndpoints): counted as a failed policy load, and shown in
// /debug/config, while the last good set keeps serving.
func (s *Sidecar) refusedXDS(what string, err error) {
	if what == "policies" {
		s.metrics.PolicyReload(false)
	}
	msg := "control plane's " + what + " refused: " + err.Error()
	s.mu.Lock()
	defer s.mu.Unlock()
	if what == "endpoints" {
		s.source.EndpointsError, s.source.EndpointsErrAt = msg, time.Now()
		s.source.LoadErrors++
		return
	}
	s.source.failed(msg, time.Now())
}

// applyXDS puts the control plane's policies in force. The swap is one
// atomic table replacement: requests in flight finish under the policy
// they started with.
func (s *Sidecar) applyXDS(pols []*policy.ResiliencePolicy, version string) error {
	seen := map[string]string{}
	for _, p := range pols {
		if other, dup := seen[p.Spec.Service]; dup {
			// Refused (refusedXDS) records it: the client NACKs it.
			return fmt.Errorf("policies %s and %s both name service %q", other, p.Metadata.Name, p.Spec.Service)
		}
		seen[p.Spec.Service] = p.Metadata.Name
	}
	s.metrics.PolicyReload(true)
	table := policy.NewTable(pols, s.cfg.Namespace)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outbound.SetPolicies(table)
	s.source.loaded("xds", table.Policies(), time.Now())
	s.source.XDSVersion = version
	return nil
}

// applyEndpoints puts the control plane's endpoints of every Service in
// force: requests to a Service are balanced over them from their next
// try. A Service it does not name is dialled by name again.
func (s *Sidecar) applyEndpoints(eps map[string][]xdsclient.Endpoint, _ string) error {
	out := make(map[string][]balancer.Target, len(eps))
	for name, list := range eps {
		ts := make([]balancer.Target, len(list))
		for i, e := range list {
			ts[i] = balancer.Target{Addr: e.Addr.String(), Terminating: e.Terminating}
		}
		out[name] = ts
	}
	s.outbound.SetEndpoints(out)
	s.mu.Lock()
	s.source.EndpointsError, s.source.EndpointsErrAt = "", time.Time{}
	s.mu.Unlock()
	return nil
}

// otherLoopback is the loopback address of the other IP family on a's
// port, when a is a loopback address; "" otherwise.
func otherLoopback(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok || !ta.IP.IsLoopback() {
		return ""
	}
	if ta.IP.To4() != nil {
		return net.JoinHostPort("::1", strconv.Itoa(ta.Port))
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ta.Port))
}

// serverLog is net/http's error log for the sidecar's servers. Its lines
// are a client's business (a bad request line, a reset) and go out at
// debug level, except a handler's recovered panic: a bug of the sidecar's,
// which must show at the default level.
type serverLog struct{ l *slog.Logger }

func (s serverLog) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if strings.Contains(msg, "panic") {
		s.l.Error("http server", "error", msg)
	} else {
		s.l.Debug("http server", "error", msg)
	}
	return len(p), nil
}

package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"

	"github.com/minimesh/minimesh/internal/connlimit"
)

// Server is the controller's two listeners: the webhook over TLS, and a
// plain-HTTP admin listener for probes and metrics, so that Prometheus
// scrapes it without the webhook's CA.
type Server struct {
	WebhookAddr string
	AdminAddr   string
	CertFile    string
	KeyFile     string
	// Inject answers /inject.
	Inject http.Handler
	// Ready reports why the controller cannot serve yet (nil: it can).
	Ready   func() error
	Metrics *Metrics
	Log     *slog.Logger
	// ShutdownTimeout bounds how long in-flight admissions may take to
	// finish after ctx ends (default 10 s, the API server's own timeout
	// for a webhook call is shorter).
	ShutdownTimeout time.Duration
	// ShutdownDelay is how long both listeners keep serving after ctx
	// ends, /readyz answering 503, before they shut down (0: at once).
	// A terminating pod stays in the Service's routing for a moment
	// (endpoints, kube-proxy, and the API server's open connection), and
	// the API server does not retry a webhook call that is refused: a pod
	// created then would go without its sidecar (Ignore) or be refused
	// (Fail). Kubernetes' own servers wait so too
	// (kube-apiserver's --shutdown-delay-duration).
	ShutdownDelay time.Duration
	// MaxConnections caps the webhook listener's connections (0:
	// DefaultMaxConnections, negative: no cap). At the cap a newcomer
	// takes the place of a waiting connection (connlimit's Share); past
	// one peer address's share (MaxConnectionsPerSource) it is reset as
	// soon as it is accepted.
	MaxConnections int

	// after is time.After, or the clock of a test.
	after func(time.Duration) <-chan time.Time
	// Tests shorten these (0: the defaults below): the webhook's
	// per-address share and idle timeout, the admin port's cap, share
	// and time bounds.
	perSource                        int
	webhookIdle                      time.Duration
	adminMax, adminPerSource         int
	adminRead, adminWrite, adminIdle time.Duration
	webhookLn, adminLn               *connlimit.Listener

	draining    atomic.Bool
	mu          sync.Mutex
	webhookAddr net.Addr
	adminAddr   net.Addr
}

// The bounds on what a client of either port may make the controller
// hold: it is also the control plane that every sidecar's xDS stream
// depends on. Before them, 300 TLS connections each sending 1 MiB of
// header lines without their end (net/http's default MaxHeaderBytes)
// took it from 47 MB to 489 MB of RSS, next to the chart's 512Mi limit.
const (
	// maxHeaderBytes bounds a request's header on both ports (net/http
	// adds 4 KiB of buffer on HTTP/1.1, a head of up to 20,480 bytes:
	// TestHeadFigure; on HTTP/2 it bounds each stream's header list). The API server, the kubelet's probes and Prometheus
	// send a few hundred bytes, a bearer token of a webhook kubeconfig a
	// few KiB more. Not 64 KiB: every stream of an HTTP/2 connection holds
	// its header until its handler returns.
	maxHeaderBytes = 16 << 10
	// maxStreamsPerConn is the webhook's SETTINGS_MAX_CONCURRENT_STREAMS
	// (net/http's default 250): with maxHeaderBytes it bounds what one
	// HTTP/2 connection holds, about 0.55 MB with every stream holding a
	// 16 KiB header (250 such streams: 8 MB). A client that wants more
	// calls at once opens another connection, as the API server's does
	// (client-go does not wait for a stream: StrictMaxConcurrentStreams
	// is off).
	maxStreamsPerConn = 16
	// DefaultMaxConnections caps the webhook listener
	// (--webhook-max-connections). The API server holds a connection per
	// instance (HTTP/2; one more per 16 calls at once). Filled (16
	// streams each, every one with a 16 KiB header and a body that never
	// ends) they took the controller from 28 to 173 MB of RSS; over
	// HTTP/1.1, each with a 16 KiB header never ended, 8.5 MB more
	// (docs/injector.md).
	DefaultMaxConnections = 128
	// DefaultMaxConnectionsPerSource is one peer address's share of the
	// webhook's places. A cap alone let 128 idle keep-alive connections
	// from pods hold every place, and the API server's next connection
	// was reset (its admissions failed, failurePolicy applied). Now one
	// address holds at most a quarter, and at the cap the API server's
	// newcomer takes an idle connection's place, or one of the address
	// holding the most (connlimit.Listener.Share). A quarter, not less:
	// HA API servers behind one address (a konnectivity agent, a managed
	// control plane's NAT) share it, and 32 HTTP/2 connections carry 512
	// calls at once, far past the 2 admissions decoded at once.
	DefaultMaxConnectionsPerSource = 32
	// webhookIdleTimeout closes a webhook connection idle this long
	// (net/http used ReadTimeout's 30 s): longer than client-go's idle
	// pool (90 s), so that the API server, not the webhook, ends an idle
	// connection and never races a call sent on one being closed. Idle
	// connections cost a place only until a newcomer needs it.
	webhookIdleTimeout = 2 * time.Minute
	// The admin port is on the pod network (the kubelet's probes,
	// Prometheus), and had no cap and no time bound: 2,000 connections
	// each after one GET /healthz stayed open for good, 20 KB and a
	// goroutine each. Now it has the sidecar admin port's bounds
	// (docs/operations.md): 64 places, 16 per peer address, shared
	// (connlimit.Listener.Share), a request read within 10 s, its answer
	// written within 10 s, and a connection idle for 5 min closed
	// (Prometheus keeps its scrape connection up to 5 min idle: it, not
	// the controller, ends it).
	adminMaxConnections          = 64
	adminMaxConnectionsPerSource = 16
	adminReadTimeout             = 10 * time.Second
	adminWriteTimeout            = 10 * time.Second
	adminIdleTimeout             = 5 * time.Minute
)

// or is v, or def when v is 0.
func or[T int | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// connState is l's ConnState hook for an http.Server, which hands it the
// *tls.Conn of a TLS port: connlimit finds its *Conn through Unwrap
// methods, and a *tls.Conn has NetConn instead.
func connState(l *connlimit.Listener) func(net.Conn, http.ConnState) {
	return func(c net.Conn, st http.ConnState) {
		if tc, ok := c.(*tls.Conn); ok {
			c = tc.NetConn()
		}
		l.ConnState(c, st)
	}
}

// Run serves until ctx ends, then for ShutdownDelay more with /readyz
// answering 503, then lets in-flight admissions finish. The
// certificate is read at once, so a missing or bad file fails Run before
// anything listens, and reloaded when the files change (poll and watch),
// so a rotated Secret is served without a restart.
//
// Without a CertFile there is no webhook listener: the controller serves
// only policies (--policy-dir on a laptop).
func (s *Server) Run(ctx context.Context) error {
	var cw *certwatcher.CertWatcher
	var wl *connlimit.Listener
	var err error
	if s.CertFile != "" {
		if cw, err = certwatcher.New(s.CertFile, s.KeyFile); err != nil {
			return fmt.Errorf("load TLS certificate %s and key %s: %w", s.CertFile, s.KeyFile, err)
		}
		ln, err := net.Listen("tcp", s.WebhookAddr)
		if err != nil {
			return fmt.Errorf("webhook listener: %w", err)
		}
		n := or(s.MaxConnections, DefaultMaxConnections)
		wl = connlimit.New(ln.(*net.TCPListener), max(n, 0))
		if n > 0 {
			// The API server must get in at the cap: no one address
			// holds every place, and a newcomer takes the place of one
			// that waits (docs/injector.md).
			wl.Share(or(s.perSource, DefaultMaxConnectionsPerSource))
		}
		s.Metrics.conns.Store(wl)
	}
	ln, err := net.Listen("tcp", s.AdminAddr)
	if err != nil {
		if wl != nil {
			wl.Close()
		}
		return fmt.Errorf("admin listener: %w", err)
	}
	al := connlimit.New(ln.(*net.TCPListener), or(s.adminMax, adminMaxConnections))
	// The kubelet's probes must get in whoever else holds connections.
	al.Share(or(s.adminPerSource, adminMaxConnectionsPerSource))
	s.Metrics.admin.Store(al)
	s.mu.Lock()
	if wl != nil {
		s.webhookAddr = wl.Addr()
	}
	s.adminAddr = al.Addr()
	s.webhookLn, s.adminLn = wl, al
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	if cw != nil {
		go func() {
			if err := cw.Start(ctx); err != nil {
				errc <- fmt.Errorf("watch TLS certificate: %w", err)
			}
		}()
	}

	health := http.NewServeMux()
	health.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	health.HandleFunc("GET /readyz", s.readyz)

	hooks := http.NewServeMux()
	if s.Inject != nil {
		hooks.Handle("/inject", s.Inject)
	}
	hooks.Handle("/", health)
	webhook := &http.Server{
		Handler:           hooks,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       or(s.webhookIdle, webhookIdleTimeout),
		MaxHeaderBytes:    maxHeaderBytes,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: maxStreamsPerConn},
		ErrorLog:          slog.NewLogLogger(s.Log.Handler(), slog.LevelDebug),
	}
	if wl != nil {
		// Which connections wait for a request, for Share's evictions.
		webhook.ConnState = connState(wl)
	}
	admin := http.NewServeMux()
	admin.Handle("GET /metrics", promhttp.HandlerFor(s.Metrics.Registry, promhttp.HandlerOpts{}))
	admin.Handle("/", health)
	adminSrv := &http.Server{
		Handler:           admin,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       or(s.adminRead, adminReadTimeout),
		WriteTimeout:      or(s.adminWrite, adminWriteTimeout),
		IdleTimeout:       or(s.adminIdle, adminIdleTimeout),
		MaxHeaderBytes:    maxHeaderBytes,
		ConnState:         connState(al),
	}

	if wl != nil {
		webhook.TLSConfig = &tls.Config{GetCertificate: cw.GetCertificate, MinVersion: tls.VersionTLS12}
		go func() { errc <- webhook.ServeTLS(wl, "", "") }()
		s.Log.Info("webhook serving", "addr", wl.Addr().String())
	}
	go func() { errc <- adminSrv.Serve(al) }()
	s.Log.Info("admin serving", "addr", al.Addr().String())

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	if runErr == nil && s.ShutdownDelay > 0 {
		s.draining.Store(true)
		// Each connection ends after its answer (HTTP/2: GOAWAY once
		// idle), so that the API server's next call dials again and
		// meets a pod that is not going.
		webhook.SetKeepAlivesEnabled(false)
		s.Log.Info("shutting down: /readyz answers 503, serving on while the endpoints drop this pod", "delay", s.ShutdownDelay.String())
		after := s.after
		if after == nil {
			after = time.After
		}
		select {
		case <-after(s.ShutdownDelay):
		case runErr = <-errc:
		}
	}
	timeout := s.ShutdownTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	sctx, scancel := context.WithTimeout(context.Background(), timeout)
	defer scancel()
	// Both at once: each Shutdown closes its listener first and then waits
	// for its requests, and neither port may keep accepting while the
	// other drains.
	werr := make(chan error, 1)
	go func() { werr <- webhook.Shutdown(sctx) }()
	var shutErr error
	if e := adminSrv.Shutdown(sctx); e != nil {
		shutErr = fmt.Errorf("admin shutdown: %w", e)
	}
	if e := <-werr; e != nil {
		shutErr = errors.Join(fmt.Errorf("webhook shutdown (admissions still in flight after %v): %w", timeout, e), shutErr)
	}
	if errors.Is(runErr, http.ErrServerClosed) {
		runErr = nil
	}
	return errors.Join(runErr, shutErr)
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.draining.Load() {
		http.Error(w, "not ready: shutting down", http.StatusServiceUnavailable)
		return
	}
	if s.Ready != nil {
		if err := s.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	_, _ = w.Write([]byte("ok\n"))
}

// Addrs are the bound addresses once Run listens (nil before), for tests
// that listen on port 0.
func (s *Server) Addrs() (webhook, admin net.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.webhookAddr, s.adminAddr
}

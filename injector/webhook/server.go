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
	// DefaultMaxConnections, negative: no cap); more are reset as soon
	// as they are accepted.
	MaxConnections int

	// after is time.After, or the clock of a test.
	after func(time.Duration) <-chan time.Time

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
	// adds 4 KiB of buffer on HTTP/1.1; on HTTP/2 it bounds each stream's
	// header list). The API server, the kubelet's probes and Prometheus
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
	// instance (HTTP/2; one more per 16 calls at once). Filled, they
	// cost about 70 MB (HTTP/2, as above), 8.5 MB over HTTP/1.1
	// (docs/injector.md).
	DefaultMaxConnections = 128
)

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
	var wl net.Listener
	var err error
	if s.CertFile != "" {
		if cw, err = certwatcher.New(s.CertFile, s.KeyFile); err != nil {
			return fmt.Errorf("load TLS certificate %s and key %s: %w", s.CertFile, s.KeyFile, err)
		}
		if wl, err = net.Listen("tcp", s.WebhookAddr); err != nil {
			return fmt.Errorf("webhook listener: %w", err)
		}
		n := s.MaxConnections
		if n == 0 {
			n = DefaultMaxConnections
		}
		if n > 0 {
			c := CapConns(wl, n, "webhook", s.Metrics.connsRefused, s.Log)
			s.Metrics.conns.Store(c)
			wl = c
		}
	}
	al, err := net.Listen("tcp", s.AdminAddr)
	if err != nil {
		if wl != nil {
			wl.Close()
		}
		return fmt.Errorf("admin listener: %w", err)
	}
	s.mu.Lock()
	if wl != nil {
		s.webhookAddr = wl.Addr()
	}
	s.adminAddr = al.Addr()
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
		MaxHeaderBytes:    maxHeaderBytes,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: maxStreamsPerConn},
		ErrorLog:          slog.NewLogLogger(s.Log.Handler(), slog.LevelDebug),
	}
	admin := http.NewServeMux()
	admin.Handle("GET /metrics", promhttp.HandlerFor(s.Metrics.Registry, promhttp.HandlerOpts{}))
	admin.Handle("/", health)
	adminSrv := &http.Server{Handler: admin, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: maxHeaderBytes}

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

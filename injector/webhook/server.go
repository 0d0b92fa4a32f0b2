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

	// after is time.After, or the clock of a test.
	after func(time.Duration) <-chan time.Time

	draining    atomic.Bool
	mu          sync.Mutex
	webhookAddr net.Addr
	adminAddr   net.Addr
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
	var wl net.Listener
	var err error
	if s.CertFile != "" {
		if cw, err = certwatcher.New(s.CertFile, s.KeyFile); err != nil {
			return fmt.Errorf("load TLS certificate %s and key %s: %w", s.CertFile, s.KeyFile, err)
		}
		if wl, err = net.Listen("tcp", s.WebhookAddr); err != nil {
			return fmt.Errorf("webhook listener: %w", err)
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
		ErrorLog:          slog.NewLogLogger(s.Log.Handler(), slog.LevelDebug),
	}
	admin := http.NewServeMux()
	admin.Handle("GET /metrics", promhttp.HandlerFor(s.Metrics.Registry, promhttp.HandlerOpts{}))
	admin.Handle("/", health)
	adminSrv := &http.Server{Handler: admin, ReadHeaderTimeout: 10 * time.Second}

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

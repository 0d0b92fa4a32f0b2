package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/minimesh/minimesh/injector"
	"github.com/minimesh/minimesh/injector/endpointctl"
	"github.com/minimesh/minimesh/injector/policyctl"
	"github.com/minimesh/minimesh/injector/webhook"
	"github.com/minimesh/minimesh/internal/connlimit"
	"github.com/minimesh/minimesh/internal/memlimit"
	"github.com/minimesh/minimesh/wellknown"
	"github.com/minimesh/minimesh/xds"
)

type controllerFlags struct {
	webhookAddr, adminAddr string
	certFile, keyFile      string
	kubeconfig, config     string
	logLevel               string
	xdsAddr, policyDir     string
	namespace              string
	xdsMaxConns            int
	webhookMaxConns        int
	shutdownDelay          time.Duration
}

func newControllerCmd() *cobra.Command {
	var f controllerFlags
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run the control plane: the injection webhook and the policy server",
		Long: "controller serves the sidecar injector as a mutating admission webhook\n" +
			"(POST /inject, AdmissionReview v1) over TLS, policies and every Service's endpoints\n" +
			"to every sidecar over xDS (ADS on --xds-addr), and /healthz, /readyz and /metrics\n" +
			"on the admin address.\n" +
			"Policies come from ResiliencePolicy objects (their status says whether they\n" +
			"were accepted) or, with --policy-dir, from files: then no cluster is needed and\n" +
			"no endpoints are served.\n" +
			"Without --tls-cert-file the webhook is off.\n" +
			"On SIGTERM /readyz answers 503 at once and everything keeps serving for\n" +
			"--shutdown-delay, while the pod leaves the Service's endpoints; then it stops.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			// The first signal starts the drain; a second one (Ctrl-C
			// again) ends the process at once, as signals do by default.
			context.AfterFunc(ctx, stop)
			return runController(ctx, f, cmd)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.webhookAddr, "webhook-addr", fmt.Sprintf(":%d", wellknown.WebhookPort), "address of the webhook's TLS listener")
	fl.StringVar(&f.adminAddr, "admin-addr", fmt.Sprintf(":%d", wellknown.AdminPort), "address of the plain-HTTP listener for /healthz, /readyz and /metrics")
	fl.StringVar(&f.certFile, "tls-cert-file", "", "serving certificate (PEM), reloaded when it changes")
	fl.StringVar(&f.keyFile, "tls-key-file", "", "its private key (PEM)")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
	fl.StringVar(&f.config, "config", "", "injection config YAML: proxy image, resources, ports, OTLP endpoint (default: built-in)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.xdsAddr, "xds-addr", fmt.Sprintf(":%d", wellknown.XDSPort), "address of the xDS (ADS) gRPC listener the sidecars connect to")
	fl.IntVar(&f.xdsMaxConns, "xds-max-connections", defaultXDSMaxConnections, "most connections the xDS listener holds at once; more are reset as soon as accepted (0: no limit)")
	fl.IntVar(&f.webhookMaxConns, "webhook-max-connections", webhook.DefaultMaxConnections, "most connections the webhook listener holds at once; at the cap a newcomer takes an idle connection's place, and one past a peer address's share ("+strconv.Itoa(webhook.DefaultMaxConnectionsPerSource)+") is reset as soon as accepted (0: no limit)")
	fl.StringVar(&f.policyDir, "policy-dir", "", "serve the policies of this directory instead of the cluster's ResiliencePolicy objects")
	fl.StringVar(&f.namespace, "namespace", orEnv("POD_NAMESPACE", "minimesh"), "namespace whose ResiliencePolicy objects apply cluster-wide (default: $POD_NAMESPACE, else minimesh)")
	fl.DurationVar(&f.shutdownDelay, "shutdown-delay", defaultShutdownDelay, "on SIGTERM, how long the webhook, xDS and admin listeners keep serving, /readyz answering 503, before they stop (0: at once)")
	return cmd
}

// runController runs until stopping ends (SIGTERM), then for
// --shutdown-delay more.
func runController(stopping context.Context, f controllerFlags, cmd *cobra.Command) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", f.logLevel)
	}
	log := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
	// client-go logs through klog, the certificate watcher through
	// controller-runtime's logr: one format in the controller's output.
	klog.SetSlogLogger(log)
	ctrllog.SetLogger(logr.FromSlogHandler(log.Handler()))

	if f.xdsMaxConns < 0 {
		return fmt.Errorf("--xds-max-connections %d: want 0 (no limit) or more", f.xdsMaxConns)
	}
	if f.webhookMaxConns < 0 {
		return fmt.Errorf("--webhook-max-connections %d: want 0 (no limit) or more", f.webhookMaxConns)
	}
	if f.shutdownDelay < 0 {
		return fmt.Errorf("--shutdown-delay %v: want 0 (none) or more", f.shutdownDelay)
	}
	// What serves (the xDS server, the informers the webhook reads) lives
	// until the webhook server has drained, not just until the signal.
	ctx, cancel := context.WithCancel(context.WithoutCancel(stopping))
	defer cancel()
	if (f.certFile == "") != (f.keyFile == "") {
		return errors.New("--tls-cert-file and --tls-key-file go together")
	}
	if f.certFile != "" {
		// The server loads them again and keeps watching; this first read
		// fails before anything listens or calls the cluster, so that a
		// missing Secret is what the error says rather than a kubeconfig
		// or port problem found on the way.
		if _, err := tls.LoadX509KeyPair(f.certFile, f.keyFile); err != nil {
			return fmt.Errorf("--tls-cert-file %s, --tls-key-file %s: %w", f.certFile, f.keyFile, err)
		}
	}
	cfg := injector.DefaultConfig()
	if f.config != "" {
		var err error
		if cfg, err = injector.LoadConfig(f.config); err != nil {
			return err
		}
	}

	// Once the flags are good (their errors come alone). Pushing every Service's endpoints to many sidecars makes garbage
	// fast: without a Go memory limit the heap ran to 726 MB for 1,000
	// sidecars and 1,125 endpoints, with one under the container's limit
	// it stays below it (docs/benchmarks.md, "Endpoints (EDS)").
	memlimit.Set(memlimit.DefaultCgroupRoot, log)

	// The policy server: sidecars connect before anything else is ready,
	// and get their snapshot when the first one is set.
	metrics := webhook.NewMetrics()
	xdsSrv := xds.NewServer(ctx, xds.Callbacks(log, metrics.Registry))
	// Policies left out for size: a log line and a gauge (their statuses
	// say TooMany).
	if err := xdsSrv.ReportPolicies(log, metrics.Registry); err != nil {
		return fmt.Errorf("policy metrics: %w", err)
	}
	if f.policyDir == "" {
		// From the cluster, the endpoints too: no answer before both.
		xdsSrv.ExpectEndpoints()
	}
	xl, err := net.Listen("tcp", f.xdsAddr)
	if err != nil {
		return fmt.Errorf("xds listener: %w", err)
	}
	if f.xdsMaxConns > 0 {
		c, err := capConns(xl, f.xdsMaxConns, metrics.Registry)
		if err != nil {
			xl.Close()
			return err
		}
		xl = c
	}
	// A sidecar that stops reading is closed rather than left holding
	// its response in memory (xds.DefaultSendTimeout); its connection's
	// writes tell it from one whose response is still on the wire.
	tracked := xds.TrackWrites(xl)
	sendTimeouts, err := xdsSrv.SendTimeouts(tracked, log, metrics.Registry)
	if err != nil {
		xl.Close()
		return fmt.Errorf("xds metrics: %w", err)
	}
	g := grpc.NewServer(append(xdsServerOptions(), sendTimeouts)...)
	xdsSrv.Register(g)
	go func() {
		if err := g.Serve(tracked); err != nil {
			log.Error("xds server", "err", err)
		}
	}()
	defer g.Stop()
	log.Info("xds serving", "addr", xl.Addr().String())

	var ready []func() error
	var rc *rest.Config
	if f.policyDir == "" || f.certFile != "" {
		if rc, err = restConfig(f.kubeconfig); err != nil {
			return err
		}
		rc.UserAgent = "minimesh-controller/" + wellknown.Version
	}
	if f.policyDir != "" {
		files := &policyctl.Files{Dir: f.policyDir, Sink: xdsSrv, Log: log}
		if err := files.Report(metrics.Registry); err != nil {
			return err
		}
		if err := files.Load(); err != nil {
			return fmt.Errorf("--policy-dir: %w", err)
		}
		go files.Run(ctx)
	} else {
		dc, err := dynamic.NewForConfig(rc)
		if err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
		disc, err := discovery.NewDiscoveryClientForConfig(rc)
		if err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
		ctl := &policyctl.Controller{Client: dc, Discovery: disc, Sink: xdsSrv, GlobalNamespace: f.namespace, Log: log}
		go ctl.Run(ctx)
		// Every Service's endpoints (EDS). Sidecars are answered once both
		// the policies and the endpoints were read, never with an empty
		// set from a controller that has not read the cluster yet.
		kc, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
		eps := &endpointctl.Controller{Client: kc, Sink: xdsSrv, Log: log, Metrics: metrics.Registry}
		go eps.Run(ctx)
		ready = append(ready, func() error {
			if !ctl.Synced() {
				return errors.New("ResiliencePolicy informer not synced")
			}
			if !eps.Synced() {
				return errors.New("endpoint informers (Services, EndpointSlices) not synced")
			}
			return nil
		})
	}

	srv := &webhook.Server{
		WebhookAddr: f.webhookAddr,
		AdminAddr:   f.adminAddr,
		CertFile:    f.certFile,
		KeyFile:     f.keyFile,
		Metrics:     metrics,
		Log:         log,
		// The xDS server too serves on through the delay: it stops
		// when Run returns.
		ShutdownDelay: f.shutdownDelay,
		// The Server's 0 is its default; the flag's, no limit.
		MaxConnections: f.webhookMaxConns,
	}
	if f.webhookMaxConns == 0 {
		srv.MaxConnections = -1
	}
	if f.certFile != "" {
		ns, err := webhook.NewNamespaces(rc)
		if err != nil {
			return err
		}
		ns.Start(ctx)
		srv.Inject = &webhook.Handler{Config: &cfg, Namespaces: ns, Metrics: metrics, Log: log}
		ready = append(ready, func() error {
			if !ns.Synced() {
				return errors.New("namespace informer not synced")
			}
			return nil
		})
	}
	srv.Ready = func() error {
		for _, r := range ready {
			if err := r(); err != nil {
				return err
			}
		}
		return nil
	}
	log.Info("minimesh controller starting", "version", wellknown.Version, "image", cfg.Proxy.Image, "policy_dir", f.policyDir)
	if err := srv.Run(stopping); err != nil {
		return err
	}
	log.Info("minimesh controller stopped")
	return nil
}

// The xDS server's bounds on what a connection holds and how long a dead
// one is kept. A sidecar holds one connection with one stream (ADS) for as
// long as it runs; an Envoy, one stream per xDS type at most.
const (
	// xdsPingAfter, xdsPingTimeout: a connection from which nothing came
	// for 30 s is pinged, and closed when 10 s more bring nothing (a
	// sidecar's pod gone without a reset, its node lost): its streams end
	// and what the server held for them goes. Live sidecars ping every
	// 20 s (xdsclient.DefaultKeepalive), so the server pings only clients
	// that do not (an Envoy without keepalive). grpc-go's default: 2 h.
	xdsPingAfter   = 30 * time.Second
	xdsPingTimeout = 10 * time.Second
	// xdsPingMinTime is the shortest time between a client's pings the
	// server takes: half the sidecar's 20 s, and grpc-go's shortest client
	// keepalive (10 s). Pings closer than this, three times over without
	// the server sending anything in between, end the connection with
	// GOAWAY "too_many_pings" (grpc-go's default: 5 min, which would end
	// every sidecar's quiet stream after a minute).
	xdsPingMinTime = 10 * time.Second
	// xdsMaxIdle: a connection without a stream for a minute is closed
	// (GOAWAY); a sidecar always has its stream open, and closes its
	// connection between two.
	xdsMaxIdle = time.Minute
	// xdsHandshakeTimeout bounds a new connection's HTTP/2 preface
	// (grpc-go's default: 120 s of a place under the cap).
	xdsHandshakeTimeout = 10 * time.Second
	// xdsMaxStreamsPerConn is SETTINGS_MAX_CONCURRENT_STREAMS: RFC 9113's
	// recommended least (100), far above an Envoy's one per xDS type.
	// grpc-go's default: no limit (the xds server bounds streams per peer
	// address at 512, not per connection, and not loopback's).
	xdsMaxStreamsPerConn = 100
	// defaultXDSMaxConnections bounds the xDS listener's connections
	// (--xds-max-connections): one per sidecar, ten times the 1,000
	// sidecars of docs/benchmarks.md. A connection without a stream costs
	// the controller about 19 KB (10,000: 190 MB, within the chart's
	// 512Mi), one with a sidecar's idle stream about 56 KB (135 KB while
	// a push is in flight): size the memory limit for the sidecars.
	defaultXDSMaxConnections = 10000
	// defaultShutdownDelay (--shutdown-delay) covers the second or two
	// in which a terminating pod's endpoint is still routed to (the
	// EndpointSlice update, kube-proxy's rules, the API server's open
	// connection); with the webhook's 10 s to finish admissions in
	// flight it stays within the chart's terminationGracePeriodSeconds.
	defaultShutdownDelay = 5 * time.Second
)

// xdsServerOptions are the xDS gRPC server's: keepalive both ways, and
// the bounds on a connection's streams and a request's size.
func xdsServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: xdsPingAfter, Timeout: xdsPingTimeout, MaxConnectionIdle: xdsMaxIdle}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: xdsPingMinTime, PermitWithoutStream: true}),
		grpc.MaxConcurrentStreams(xdsMaxStreamsPerConn),
		// The xds server refuses a request over MaxRequestBytes once
		// decoded; the transport refuses a larger message before it is
		// read (ResourceExhausted), so it is never held whole.
		grpc.MaxRecvMsgSize(xds.MaxRequestBytes),
		grpc.ConnectionTimeout(xdsHandshakeTimeout),
	}
}

// capConns caps the xDS listener at n connections with internal/connlimit,
// as the webhook's and admin's listeners are: one past the cap is reset
// as soon as accepted (a sidecar reconnects with backoff), and counted.
// A plain cap, not Share's evictions: every sidecar holds one
// long-lived connection, none of which should be cut for a newcomer; the
// xds server bounds streams per peer address itself.
func capConns(l net.Listener, n int, reg prometheus.Registerer) (*connlimit.Listener, error) {
	tl, ok := l.(*net.TCPListener)
	if !ok {
		return nil, fmt.Errorf("xds listener: %T, want a TCP listener", l)
	}
	c := connlimit.New(tl, n)
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "minimesh_xds_connections_refused_total",
			Help: "Connections to the xDS listener reset because it held --xds-max-connections."},
			func() float64 { return float64(c.Refused()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "minimesh_xds_connections",
			Help: "Connections the xDS listener holds."}, func() float64 { return float64(c.Open()) }))
	return c, nil
}

func orEnv(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// restConfig is the explicit kubeconfig, else the in-cluster config, else
// kubectl's loading rules ($KUBECONFIG, ~/.kube/config).
func restConfig(path string) (*rest.Config, error) {
	if path == "" {
		if rc, err := rest.InClusterConfig(); err == nil {
			return rc, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if clientcmd.IsEmptyConfig(err) {
		// client-go's own message points at KUBERNETES_MASTER, which is not
		// what a user of kubectl sets: name the files that were read.
		return nil, fmt.Errorf("kubernetes client config: %s", noKubeconfig(path, rules.Precedence, os.Getenv(clientcmd.RecommendedConfigPathEnvVar) != ""))
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	return rc, nil
}

// noKubeconfig says which kubeconfig files were read and found missing or
// empty, and that no in-cluster config was found either. An explicit
// file (--kubeconfig) is the only one read, in-cluster config not tried.
func noKubeconfig(explicit string, tried []string, fromEnv bool) string {
	if explicit != "" {
		return fmt.Sprintf("no kubeconfig: %s (--kubeconfig) is empty", explicit)
	}
	files := strings.Join(tried, ", ")
	if fromEnv {
		return fmt.Sprintf("no kubeconfig: $KUBECONFIG names %s, missing or empty (~/.kube/config is read only when KUBECONFIG is unset), and this is not a pod of a cluster", files)
	}
	return fmt.Sprintf("no kubeconfig: ~/.kube/config (%s) is missing or empty, $KUBECONFIG is unset, and this is not a pod of a cluster", files)
}

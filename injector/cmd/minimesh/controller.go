package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/minimesh/minimesh/injector"
	"github.com/minimesh/minimesh/injector/webhook"
	"github.com/minimesh/minimesh/wellknown"
)

type controllerFlags struct {
	webhookAddr, adminAddr string
	certFile, keyFile      string
	kubeconfig, config     string
	logLevel               string
}

func newControllerCmd() *cobra.Command {
	var f controllerFlags
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run the injector: the mutating admission webhook",
		Long: "controller serves the sidecar injector as a mutating admission webhook\n" +
			"(POST /inject, AdmissionReview v1) over TLS, and /healthz, /readyz and\n" +
			"/metrics on the admin address. It reads namespace labels from the cluster\n" +
			"and reloads the TLS certificate when its files change.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
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
	_ = cmd.MarkFlagRequired("tls-cert-file")
	_ = cmd.MarkFlagRequired("tls-key-file")
	return cmd
}

func runController(ctx context.Context, f controllerFlags, cmd *cobra.Command) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", f.logLevel)
	}
	log := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
	// client-go logs through klog; one format in the controller's output.
	klog.SetSlogLogger(log)

	cfg := injector.DefaultConfig()
	if f.config != "" {
		var err error
		if cfg, err = injector.LoadConfig(f.config); err != nil {
			return err
		}
	}
	rc, err := restConfig(f.kubeconfig)
	if err != nil {
		return err
	}
	rc.UserAgent = "minimesh-controller/" + wellknown.Version
	ns, err := webhook.NewNamespaces(rc)
	if err != nil {
		return err
	}
	ns.Start(ctx)

	metrics := webhook.NewMetrics()
	srv := &webhook.Server{
		WebhookAddr: f.webhookAddr,
		AdminAddr:   f.adminAddr,
		CertFile:    f.certFile,
		KeyFile:     f.keyFile,
		Inject:      &webhook.Handler{Config: &cfg, Namespaces: ns, Metrics: metrics, Log: log},
		Metrics:     metrics,
		Log:         log,
		Ready: func() error {
			if !ns.Synced() {
				return errors.New("namespace informer not synced")
			}
			return nil
		},
	}
	log.Info("minimesh controller starting", "version", wellknown.Version, "image", cfg.Proxy.Image)
	if err := srv.Run(ctx); err != nil {
		return err
	}
	log.Info("minimesh controller stopped")
	return nil
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
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	return rc, nil
}

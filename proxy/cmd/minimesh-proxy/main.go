// Command minimesh-proxy is the minimesh sidecar.
//
//	minimesh-proxy run [flags]   serve the outbound proxy, the inbound listener and the admin port
//	minimesh-proxy init [flags]  write the iptables rules of transparent interception
//	minimesh-proxy version
//
// Every flag can also be set from the environment: --outbound-addr is
// MINIMESH_OUTBOUND_ADDR. A flag on the command line wins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/internal/exepages"
	"github.com/minimesh/minimesh/internal/memlimit"
	"github.com/minimesh/minimesh/internal/rawio"
	"github.com/minimesh/minimesh/proxy/inbound"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/sidecar"
	"github.com/minimesh/minimesh/proxy/transparent"
	"github.com/minimesh/minimesh/wellknown"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `minimesh-proxy is the minimesh sidecar.

Usage:
  minimesh-proxy run [flags]    serve the outbound proxy and the admin port
  minimesh-proxy init [flags]   write the iptables rules of transparent interception (init container)
  minimesh-proxy version        print the version

Run "minimesh-proxy run -h" or "minimesh-proxy init -h" for the flags.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return runSidecar(args[1:], stderr)
	case "init":
		return runInit(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "minimesh-proxy %s\n", wellknown.Version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "minimesh-proxy: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func runSidecar(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("minimesh-proxy run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg sidecar.Config
	var logLevel, accessLog, cgroupRoot string
	var maxConns, maxInboundConns, maxInboundPerSource int
	var rawIO bool
	resolve := resolveFlag{}
	opaque := &opaquePortsFlag{}
	_ = opaque.Set(transparent.DefaultOpaquePorts)
	fs.StringVar(&cfg.OutboundAddr, "outbound-addr", fmt.Sprintf("127.0.0.1:%d", wellknown.OutboundPort), "address of the outbound listener (the app's HTTP_PROXY)")
	fs.StringVar(&cfg.InboundAddr, "inbound-addr", "", "address of the inbound listener, where iptables redirects connections into the pod (capture-inbound; :15006): each is forwarded to the app at its original destination (empty: none)")
	fs.StringVar(&cfg.AdminAddr, "admin-addr", fmt.Sprintf(":%d", wellknown.AdminPort), "address of the admin server (/live, /ready, /metrics, /debug/ on loopback)")
	fs.StringVar(&cfg.PolicyDir, "policy-dir", "", "directory of ResiliencePolicy YAML files, reloaded when it changes (empty: built-in defaults)")
	fs.StringVar(&cfg.XDSAddress, "xds-address", "", "control plane HOST:PORT (ADS); its policies replace --policy-dir's once it answers, and stay when it goes away")
	fs.DurationVar(&cfg.XDSInitialTimeout, "xds-initial-timeout", 5*time.Second, "how long to wait for the control plane's first answer before serving with --policy-dir or the defaults")
	fs.StringVar(&cfg.ServiceName, "service-name", "", "name of the service this sidecar belongs to")
	fs.StringVar(&cfg.Namespace, "namespace", orEnv("POD_NAMESPACE", "default"), "namespace of the pod, for matching short service names (default: $POD_NAMESPACE, else default)")
	fs.StringVar(&cfg.PodName, "pod-name", os.Getenv("POD_NAME"), "name of the pod, for traces (default: $POD_NAME)")
	fs.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", "", "OTLP/gRPC trace collector HOST:PORT, e.g. jaeger-collector.observability:4317 (empty: no tracing)")
	fs.Float64Var(&cfg.TraceSampleRatio, "trace-sample-ratio", 1, "share of new traces to record, 0 to 1; requests that arrive with a trace follow its decision")
	fs.StringVar(&accessLog, "access-log", "stdout", "where the JSON access log goes: stdout or off")
	fs.BoolVar(&cfg.StdTransport, "std-transport", false, "send every request through Go's httputil.ReverseProxy and http.Transport, not the fast path for requests without a body or with a small one held whole (a switch for comparison and as a way out)")
	fs.BoolVar(&rawIO, "raw-io", true, "read and write sockets with raw system calls, which leave Go's monitor thread asleep between requests (a quarter less CPU per request at a steady rate; docs/benchmarks.md); false: net.Conn's own calls, a way out")
	fs.StringVar(&cfg.Server, "server", sidecar.ServerLean, "the outbound listener's HTTP/1.x server: lean (keep-alive requests without a body, or with one of a known length up to 16 KiB, served on the connection's goroutine; everything else handed to Go's net/http) or std (net/http alone; docs/benchmarks.md)")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", 5*time.Second, "time allowed to connect to an upstream")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 10*time.Second, "time allowed for requests in flight to finish on SIGTERM")
	fs.IntVar(&maxConns, "max-connections", sidecar.DefaultMaxConnections, "most client connections the outbound listener holds at once; more are reset as soon as accepted and counted in minimesh_connections_refused_total (0: no limit)")
	fs.IntVar(&maxInboundConns, "max-inbound-connections", sidecar.DefaultMaxConnections, "most connections the inbound listener holds at once; more are reset as soon as accepted and counted in minimesh_connections_refused_total{listener=\"inbound\"} (0: no limit)")
	fs.DurationVar(&cfg.InboundFirstByteTimeout, "inbound-first-byte-timeout", inbound.DefaultNoDataIdleTimeout, "the time an inbound connection has from its accept for its first byte either way: protocol detection waits that long for the caller's, then it is closed, counted result=\"idle-timeout\" (server-speaks-first ports belong in --opaque-ports)")
	fs.IntVar(&maxInboundPerSource, "max-inbound-connections-per-source", 0, "most of the inbound listener's connections one caller address may hold at once; more from it are reset as soon as accepted (0: no per-address limit). Either way, at the cap a newcomer takes the place of a waiting connection or of the address holding the most, rather than being reset")
	fs.StringVar(&cgroupRoot, "cgroup-root", memlimit.DefaultCgroupRoot, "where to read the container's memory limit; unless GOMEMLIMIT is set, the Go memory limit is 90% of it")
	fs.DurationVar(&cfg.RequestBodyTimeout, "request-body-timeout", outbound.DefaultRequestBodyTimeout, "how long the app may leave a request body without sending more of it, while the upstream has not answered, before the sidecar answers 408 and releases the upstream connection; HTTP/1.x bodies and sized HTTP/2 ones, never a gRPC call (0: no limit)")
	fs.Int64Var(&cfg.MaxRequestBody, "max-request-body-bytes", 0, "reject request bodies larger than this with 413 (0: no limit)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.Var(opaque, "opaque-ports", "ports (and ranges, 8000-8010) whose redirected connections are relayed as opaque TCP at once, without protocol detection: protocols whose server speaks first; replaces the default list (empty: none)")
	fs.Var(resolve, "resolve", "HOST:PORT=ADDR:PORT: dial ADDR:PORT for HOST:PORT (local development; repeatable). ADDR takes its own port, which may differ from HOST's: like curl --connect-to, not curl --resolve (HOST:PORT:ADDR, which keeps PORT)")
	if err := parseWithEnv(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	// Before any connection is made: the switch is read as each one is.
	rawio.Off = !rawIO
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(stderr, "minimesh-proxy: --log-level %q: want debug, info, warn or error\n", logLevel)
		return 2
	}
	switch accessLog {
	case "stdout":
		cfg.AccessLog = os.Stdout
	case "off":
	default:
		fmt.Fprintf(stderr, "minimesh-proxy: --access-log %q: want stdout or off\n", accessLog)
		return 2
	}
	// sidecar.Listen refuses it too, but only once logging is JSON and with
	// exit 1, as if the sidecar had failed to start.
	if cfg.Server != sidecar.ServerLean && cfg.Server != sidecar.ServerStd {
		fmt.Fprintf(stderr, "minimesh-proxy: --server %q: want %s or %s\n", cfg.Server, sidecar.ServerLean, sidecar.ServerStd)
		return 2
	}
	// The negated form also refuses NaN.
	if !(cfg.TraceSampleRatio >= 0 && cfg.TraceSampleRatio <= 1) {
		fmt.Fprintf(stderr, "minimesh-proxy: --trace-sample-ratio %v: want 0 to 1\n", cfg.TraceSampleRatio)
		return 2
	}
	// Times the sidecar cannot do without: zero or less was replaced by
	// the default without a word.
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"connect-timeout", cfg.ConnectTimeout}, {"drain-timeout", cfg.DrainTimeout}, {"xds-initial-timeout", cfg.XDSInitialTimeout}, {"inbound-first-byte-timeout", cfg.InboundFirstByteTimeout}} {
		if d.v <= 0 {
			fmt.Fprintf(stderr, "minimesh-proxy: --%s %v: want more than 0\n", d.flag, d.v)
			return 2
		}
	}
	if cfg.MaxRequestBody < 0 {
		fmt.Fprintf(stderr, "minimesh-proxy: --max-request-body-bytes %d: want 0 (no limit) or more\n", cfg.MaxRequestBody)
		return 2
	}
	for _, a := range []struct{ flag, v string }{{"xds-address", cfg.XDSAddress}, {"otlp-endpoint", cfg.OTLPEndpoint}} {
		if a.v == "" {
			continue
		}
		if !wellknown.ValidHostPort(a.v) {
			fmt.Fprintf(stderr, "minimesh-proxy: --%s %q: want HOST:PORT with a port from 1 to 65535\n", a.flag, a.v)
			return 2
		}
	}
	if maxConns < 0 {
		fmt.Fprintf(stderr, "minimesh-proxy: --max-connections %d: want 0 (no limit) or more\n", maxConns)
		return 2
	}
	if maxInboundConns < 0 {
		fmt.Fprintf(stderr, "minimesh-proxy: --max-inbound-connections %d: want 0 (no limit) or more\n", maxInboundConns)
		return 2
	}
	if maxInboundPerSource < 0 {
		fmt.Fprintf(stderr, "minimesh-proxy: --max-inbound-connections-per-source %d: want 0 (no limit) or more\n", maxInboundPerSource)
		return 2
	}
	if cfg.RequestBodyTimeout < 0 {
		fmt.Fprintf(stderr, "minimesh-proxy: --request-body-timeout %v: want 0 (no limit) or more\n", cfg.RequestBodyTimeout)
		return 2
	}
	if cfg.RequestBodyTimeout == 0 {
		cfg.RequestBodyTimeout = -1 // no limit
	}
	cfg.MaxConnections = maxConns
	if maxConns == 0 {
		cfg.MaxConnections = -1 // no cap
	}
	cfg.MaxInboundConnections = maxInboundConns
	if maxInboundConns == 0 {
		cfg.MaxInboundConnections = -1
	}
	cfg.MaxInboundConnectionsPerSource = maxInboundPerSource
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg.Resolve = resolve
	cfg.OpaquePorts = opaque.p
	memlimit.Set(cgroupRoot, cfg.Logger)
	cfg.Started = func() {
		// What only the start touched (package inits, flags, the first
		// policy load) leaves the RSS: 1.3-3 MB idle, 0.8-1.5 MB under load
		// (docs/benchmarks.md, "The start's pages let go").
		n, err := exepages.Release()
		if err != nil {
			cfg.Logger.Warn("the start's pages of the binary stay mapped", "error", err)
			return
		}
		cfg.Logger.Debug("the start's pages of the binary let go", "address_space_bytes", n)
	}

	s, err := sidecar.Listen(cfg)
	if err != nil {
		cfg.Logger.Error("cannot start", "error", err)
		return 1
	}
	// SIGTERM (or SIGINT) starts the drain; another one during the drain
	// ends it at once, as the drain timeout would: the kubelet sends
	// SIGTERM again when a pod's grace period is shortened (kubectl
	// delete --grace-period), and a second Ctrl-C means "now". What is
	// left is cut and recorded (503 shutdown), and the process exits 0.
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	term := make(chan os.Signal, 2)
	signal.Notify(term, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(term)
	served := make(chan struct{})
	defer close(served)
	go func() {
		for first := true; ; first = false {
			select {
			case sig := <-term:
				if first {
					cfg.Logger.Info("signal: draining", "signal", sig.String(), "drain_timeout", cfg.DrainTimeout.String())
					stop()
					continue
				}
				cfg.Logger.Warn("signal during the drain: ending it now", "signal", sig.String())
				s.EndDrain()
			case <-served:
				return
			}
		}
	}()
	// SIGHUP re-reads the policy directory, as it reloads nginx and
	// HAProxy; without this it would end the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			if cfg.PolicyDir == "" {
				cfg.Logger.Info("SIGHUP: no --policy-dir to look at again")
				continue
			}
			cfg.Logger.Info("SIGHUP: looking at the policy directory again", "dir", cfg.PolicyDir)
			s.Reload()
		}
	}()
	if err := s.Serve(ctx); err != nil {
		cfg.Logger.Error("stopped", "error", err)
		return 1
	}
	return 0
}

// parseWithEnv sets each flag not given on the command line from its
// MINIMESH_ environment variable, as the injector configures the sidecar
// through the environment.
func parseWithEnv(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected argument %q", fs.Arg(0))
		fmt.Fprintln(fs.Output(), err)
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := wellknown.EnvPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			for _, item := range splitList(f, v) {
				if e := f.Value.Set(item); e != nil {
					err = fmt.Errorf("%s=%q: %w", env, v, e)
					fmt.Fprintln(fs.Output(), err)
				}
			}
		}
	})
	return err
}

func orEnv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// splitList splits a repeatable flag's environment value at commas.
func splitList(f *flag.Flag, v string) []string {
	if _, ok := f.Value.(resolveFlag); ok {
		return strings.Split(v, ",")
	}
	return []string{v}
}

// opaquePortsFlag is --opaque-ports: a comma-separated list of ports and ranges.
type opaquePortsFlag struct{ p *transparent.Ports }

func (f *opaquePortsFlag) String() string {
	if f == nil || f.p == nil {
		return ""
	}
	return f.p.String()
}

func (f *opaquePortsFlag) Set(v string) error {
	p, err := transparent.ParsePorts(v)
	if err != nil {
		return err
	}
	f.p = p
	return nil
}

// resolveFlag collects --resolve HOST:PORT=ADDR:PORT.
type resolveFlag map[string]string

func (r resolveFlag) String() string { return "" }

func (r resolveFlag) Set(v string) error {
	from, to, ok := strings.Cut(v, "=")
	if !ok || !strings.Contains(from, ":") || !strings.Contains(to, ":") {
		return fmt.Errorf("want HOST:PORT=ADDR:PORT, got %q", v)
	}
	r[strings.ToLower(from)] = to
	return nil
}

// Command bench measures what minimesh-proxy adds to an HTTP request, next
// to nginx, HAProxy and Caddy doing the same forwarding on the same machine.
//
// It starts one upstream (fortio's echo server) and, on loopback ports, the
// sidecar (bin/minimesh-proxy), nginx, HAProxy and Caddy in front of it,
// each from a generated config in a temporary directory. fortio then sends
// the same fixed request rate through each of them and straight to the
// upstream, scenario after scenario, and repeats the round -runs times; the
// report gives medians. -sweep adds more fixed rates to every round. Runs
// at no fixed rate compare the maximum rate of each target. Then the
// sidecar's fast fail from an open breaker, and each proxy's memory with
// -idle-conns idle keep-alive connections (idle.go); -http-proxy adds the
// absolute-form path through HTTP_PROXY (sweep.go), -plot the PNG figures
// (plot.go).
//
// Every request names the upstream in its Host header, which is how the
// sidecar (origin-form requests) picks the destination; nginx and HAProxy
// forward everything to the upstream anyway.
//
//	go run ./e2e/bench [-qps 1000] [-c 16] [-t 10s] [-runs 3] [-out FILE]
//
// With -transparent (root) it also measures the transparent path against
// the explicit one: in a pod network namespace with the real
// `minimesh-proxy init` rules and the sidecar as uid 15000, fortio sends
// the same load to the upstream across a veth pair directly, through the
// sidecar as an explicit proxy, and to the upstream's address redirected
// to the sidecar; then the same with a new connection per request
// (netns.go). The namespaces are removed on the way out.
//
// With -h2 it runs the HTTP/2 comparison instead: h2load over h2c with
// prior knowledge at the same fixed rate, direct to an h2c upstream and
// through the sidecar, nginx and HAProxy (h2.go).
//
// It prints a Markdown report and writes it to -out. It exits 1 when any
// request was not answered 200, or a process failed; every process it
// started is ended on the way out, interrupted or not.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/jaeger"
	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/injector"
	"k8s.io/apimachinery/pkg/api/resource"
)

type options struct {
	qps         float64
	conns       int
	duration    time.Duration
	warmup      time.Duration
	runs        int
	maxDuration time.Duration
	out         string
	scenarios   string
	extraArgs   string
	variants    variantFlag
	jaeger      bool
	// traceRatio is every sidecar's --trace-sample-ratio (0: tracing
	// off), with a Jaeger the harness starts as their collector, otlp.
	traceRatio  float64
	otlp        string
	sidecarEnv  string
	policyFile  string
	sidecar     string
	bodySize    int
	requestBody int
	resolution  float64
	workers     int
	keep        bool
	transparent bool
	newConnQPS  float64
	h2          bool
	h2Streams   int
	sweep       rateList      // -sweep: more fixed rates
	httpProxy   bool          // -http-proxy: the absolute-form path too
	idleConns   intList       // -idle-conns
	fastFailT   time.Duration // -fastfail-t
	plot        bool          // -plot
	plotDir     string        // -plot-dir
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.Float64Var(&o.qps, "qps", 1000, "fixed request rate of every scenario, requests per second")
	fs.IntVar(&o.conns, "c", 16, "connections (fortio -c)")
	fs.DurationVar(&o.duration, "t", 10*time.Second, "duration of each measured run")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured run at -qps against each target before the first round (0: none)")
	fs.IntVar(&o.runs, "runs", 3, "rounds of runs; the report gives medians")
	fs.DurationVar(&o.maxDuration, "max-t", 5*time.Second, "duration of each maximum-rate run, direct and through the sidecar, once per round (0: skip)")
	fs.StringVar(&o.out, "out", filepath.Join("e2e", "bench", "results", "latest.md"), "file to write the Markdown report to (empty: stdout only)")
	fs.StringVar(&o.scenarios, "scenarios", strings.Join(allKeys, ","), "scenarios to run, from "+strings.Join(allKeys, ",")+" (direct always runs), and "+strings.Join(extraKeys, ",")+" if named (the floor of a Go proxy: docs/benchmarks.md)")
	fs.StringVar(&o.extraArgs, "extra-args", "", "more arguments for `minimesh-proxy run`, split on spaces (e.g. tracing flags)")
	fs.Var(&o.variants, "variant", "NAME=ARGS: one more sidecar, measured side by side with the others, with these extra arguments (a leading @PATH is its binary, another build; then leading VAR=value words are its environment); $OTLP in ARGS is the -jaeger collector (repeatable)")
	fs.BoolVar(&o.jaeger, "jaeger", false, "start Jaeger (memory store, loopback) as the trace collector for the variants' $OTLP (-trace-ratio above 0 starts it too)")
	fs.Float64Var(&o.traceRatio, "trace-ratio", 0.01, "tracing of the sidecars on loopback: their --trace-sample-ratio, spans sent to a Jaeger the harness starts (memory store); 0: tracing off. "+
		"Issue 16's targets are measured with 0.01. Not with -h2, nor for -transparent's sidecars in their namespace")
	fs.StringVar(&o.sidecarEnv, "sidecar-env", injectedEnv, "environment for the sidecar (and its variants, which may override it), space-separated K=V; the default is what the injector sets with the chart's default CPU limit of one core (docs/annotations.md); empty: Go's defaults")
	fs.StringVar(&o.policyFile, "policy", "", "policy file for the sidecar (default: a generated policy for the upstream with timeout, retries and circuit breaker)")
	fs.StringVar(&o.sidecar, "sidecar", "", "minimesh-proxy binary (default: $MINIMESH_BIN_DIR/minimesh-proxy or bin/minimesh-proxy)")
	fs.IntVar(&o.bodySize, "body-size", 256, "bytes in each upstream response body")
	fs.IntVar(&o.requestBody, "request-body", 0, "bytes in each request's body: a POST (fortio -payload-size) in every run but the fast fail's; 0: GET")
	fs.Float64Var(&o.resolution, "resolution", 0.00001, "fortio histogram resolution in seconds (fortio -r)")
	fs.IntVar(&o.workers, "peer-workers", runtime.NumCPU(), "nginx worker processes and HAProxy threads (the sidecar runs as injected, with one P: -sidecar-env; 1 gives the peers its budget of threads)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory with the generated configs")
	fs.BoolVar(&o.transparent, "transparent", false, "also measure in a pod network namespace with minimesh-proxy init's rules (needs root): direct, the sidecar as explicit proxy, and transparently redirected to it")
	fs.Float64Var(&o.newConnQPS, "newconn-qps", 200, "with -transparent: fixed rate of the runs with a new connection per request (fortio -keepalive=false) against the three namespace targets (0: none)")
	fs.BoolVar(&o.h2, "h2", false, "instead of the HTTP/1.1 runs, the HTTP/2 comparison: h2load (nghttp2-client) at -qps over h2c with prior knowledge from -c connections, direct to an h2c upstream, through the sidecar, nginx (grpc_pass) and HAProxy (proto h2), -warmup then -t per run (h2.go)")
	fs.IntVar(&o.h2Streams, "h2-streams", 10, "with -h2: most concurrent streams per connection (h2load -m)")
	fs.Var(&o.sweep, "sweep", "comma-separated fixed rates (requests/s) to run every loopback scenario at besides -qps, e.g. 100,1000,5000: "+
		"each round runs every rate, the scenarios rotating; the report gets a table per rate (sweep.go)")
	fs.BoolVar(&o.httpProxy, "http-proxy", false, "also the HTTP_PROXY path at -qps: fortio's standard client (-stdclient, which honours HTTP_PROXY) "+
		"sends absolute-form requests for http://"+proxyHost+":PORT/ with HTTP_PROXY set to each proxy, against the same client direct (sweep.go)")
	o.idleConns = intList{1000, 10000}
	fs.Var(&o.idleConns, "idle-conns", "comma-separated counts of idle keep-alive connections (one request each) held to a fresh instance of each proxy, "+
		"to measure its RSS per connection; empty: skip (idle.go)")
	fs.DurationVar(&o.fastFailT, "fastfail-t", 5*time.Second, "duration of each round's run at -qps to a destination whose breaker is open, "+
		"the sidecar answering 503 without dialling (0: skip; idle.go)")
	fs.BoolVar(&o.plot, "plot", false, "render the figures as PNG into -plot-dir: benchmarks-latency.png (p50 and p99 against the rate) and "+
		"benchmarks-cost.png (CPU per 1,000 requests and RSS) (plot.go)")
	fs.StringVar(&o.plotDir, "plot-dir", "docs", "where -plot writes its PNG files")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	switch {
	case o.qps <= 0:
		return nil, errors.New("-qps must be > 0 (the maximum rate has its own runs, see -max-t)")
	case o.conns < 1:
		return nil, errors.New("-c must be ≥ 1")
	case o.duration <= 0:
		return nil, errors.New("-t must be > 0")
	case o.runs < 1:
		return nil, errors.New("-runs must be ≥ 1")
	case o.warmup < 0 || o.maxDuration < 0:
		return nil, errors.New("-warmup and -max-t must be ≥ 0")
	case o.workers < 1:
		return nil, errors.New("-peer-workers must be ≥ 1")
	case o.newConnQPS < 0:
		return nil, errors.New("-newconn-qps must be ≥ 0")
	case o.h2Streams < 1:
		return nil, errors.New("-h2-streams must be ≥ 1")
	case o.h2 && (o.transparent || len(o.variants) > 0 || o.jaeger):
		return nil, errors.New("-h2 runs alone: not with -transparent, -variant or -jaeger")
	case o.h2 && (len(o.sweep) > 0 || o.httpProxy || o.plot):
		return nil, errors.New("-h2 runs alone: not with -sweep, -http-proxy or -plot")
	case o.fastFailT < 0:
		return nil, errors.New("-fastfail-t must be ≥ 0")
	case o.traceRatio < 0 || o.traceRatio > 1:
		return nil, errors.New("-trace-ratio must be from 0 to 1")
	}
	if o.h2 {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if set["trace-ratio"] && o.traceRatio > 0 {
			return nil, errors.New("-h2 runs alone: not with -trace-ratio")
		}
		o.traceRatio = 0 // the HTTP/2 comparison runs without Jaeger
		// A scenario named that the HTTP/2 comparison has no peer for
		// would be left out without a word (runH2); by default Caddy is.
		for _, k := range o.scenarioKeys() {
			if !set["scenarios"] {
				break
			}
			if !slices.Contains(h2Keys, k) {
				return nil, fmt.Errorf("-h2 compares %s: not %q", strings.Join(h2Keys, ", "), k)
			}
		}
	}
	for _, q := range o.sweep {
		if q <= 0 {
			return nil, errors.New("-sweep: every rate must be > 0 (the maximum rate has its own runs, see -max-t)")
		}
	}
	for _, n := range o.idleConns {
		if n < 1 {
			return nil, errors.New("-idle-conns: every count must be ≥ 1")
		}
	}
	for _, k := range o.scenarioKeys() {
		if !slices.Contains(allKeys, k) && !slices.Contains(extraKeys, k) {
			return nil, fmt.Errorf("-scenarios: unknown scenario %q", k)
		}
	}
	return o, nil
}

// scenarioKeys are the scenarios asked for, direct first.
func (o *options) scenarioKeys() []string {
	keys := []string{keyDirect}
	for _, k := range strings.Split(o.scenarios, ",") {
		if k = strings.TrimSpace(k); k != "" && !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

func (o *options) want(key string) bool { return slices.Contains(o.scenarioKeys(), key) }

func main() {
	if len(os.Args) == 3 && os.Args[1] == policyArg {
		// The bench's policy for another tool of the same measurements
		// (scripts/instructions.sh): one policy, written here.
		fmt.Print(sidecarPolicy(os.Args[2]))
		return
	}
	if len(os.Args) == 3 && os.Args[1] == toolArg {
		// Where the harness finds a tool, for scripts/instructions.sh:
		// one lookup (tools.Find), not a second one in the script.
		p, err := tools.Find(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
		fmt.Println(p)
		return
	}
	if len(os.Args) == 6 && os.Args[1] == peerConfigArg {
		conf, err := peerConfig(os.Args[2], os.Args[3], os.Args[4], os.Args[5])
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
		fmt.Print(conf)
		return
	}
	if len(os.Args) == 5 && os.Args[1] == epollArg {
		fmt.Fprintln(os.Stderr, "epoll-relay:", runEpollRelay(os.Args[2], os.Args[3], os.Args[4]))
		os.Exit(1)
	}
	if len(os.Args) == 4 && os.Args[1] == relayArg {
		fmt.Fprintln(os.Stderr, "relay:", runRelay(os.Args[2], os.Args[3]))
		os.Exit(1)
	}
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if err := run(ctx, o); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %w", err)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func run(ctx context.Context, o *options) (err error) {
	if o.h2 {
		return runH2(ctx, o)
	}
	fortio, err := tools.Find("fortio")
	if err != nil {
		return err
	}
	if o.transparent {
		if err := needTransparent(); err != nil {
			return err
		}
	}
	var sidecarBin, nginxBin, haproxyBin string
	if o.want(keyMinimesh) || o.transparent || len(o.variants) > 0 {
		if sidecarBin = o.sidecar; sidecarBin == "" {
			if sidecarBin, err = tools.Binary("minimesh-proxy"); err != nil {
				return err
			}
		}
		if err := checkNoCgo(sidecarBin); err != nil {
			return err
		}
	}
	if o.want(keyNginx) || o.want(keyNginxLog) {
		if nginxBin, err = tools.Find("nginx"); err != nil {
			return err
		}
	}
	if o.want(keyHAProxy) || o.want(keyHAProxy1) {
		if haproxyBin, err = tools.Find("haproxy"); err != nil {
			return err
		}
	}
	var caddyBin string
	if o.want(keyCaddy) {
		if caddyBin, err = tools.Find("caddy"); err != nil {
			return err
		}
	}
	// Thousands of idle connections (-idle-conns) need as many file
	// descriptors, here and in the proxies, which inherit the limit.
	raiseFileLimit(slices.Max(append([]int{0}, o.idleConns...)))

	rep := newReport(o)
	rep.fortioVersion, _ = runCmd(ctx, fortio, "version")

	dir, cleanup, err := configDir("minimesh-bench-", o.keep)
	if err != nil {
		return err
	}
	defer cleanup()

	ps := &procs{}
	defer ps.stopAll()

	var world *netnsWorld
	if o.transparent {
		if world, err = newNetnsWorld(ctx, sidecarBin); err != nil {
			return err
		}
		logf("namespaces %s and %s; %s", world.pod, world.peer, world.backend())
		// Before the deferred stopAll above: the processes in the
		// namespaces end first, then the namespaces go.
		defer func() {
			ps.stopAll()
			world.remove()
		}()
	}

	upstream, upstreamProc, err := startUpstream(ctx, ps, fortio, dir, o.bodySize)
	if err != nil {
		return err
	}
	rep.upstream = upstreamProc
	logf("upstream: fortio echo server on %s", upstream)
	targets := []*target{{key: keyDirect, name: "direct", addr: upstream,
		version: "fortio " + rep.fortioVersion, config: "no proxy: fortio → upstream"}}
	// Jaeger only where a sidecar on loopback sends it spans (the
	// harness's, and the fresh ones -idle-conns starts of them).
	if o.jaeger || o.traceRatio > 0 && (o.want(keyMinimesh) || len(o.variants) > 0) {
		j, err := jaeger.Start(jaeger.Options{MaxTraces: 20000})
		if err != nil {
			return fmt.Errorf("jaeger: %w", err)
		}
		defer j.Stop()
		o.otlp = j.OTLPAddr
		logf("jaeger: OTLP on %s", o.otlp)
	}
	if o.want(keyMinimesh) {
		t, err := startSidecar(ctx, ps, sidecarBin, dir, upstream, o)
		if err != nil {
			return err
		}
		if err := checkSidecar(ctx, t, upstream); err != nil {
			return err
		}
		targets = append(targets, t)
	}
	for _, v := range o.variants {
		args := strings.ReplaceAll(v.args, "$OTLP", o.otlp)
		t, err := startSidecarVariant(ctx, ps, sidecarBin, dir, upstream, o, v.name, args)
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	for _, n := range []struct {
		key    string
		logged bool
	}{{keyNginx, false}, {keyNginxLog, true}} {
		if !o.want(n.key) {
			continue
		}
		t, err := startNginx(ctx, ps, nginxBin, dir, upstream, o.workers, peerConns, n.logged)
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	if o.want(keyHAProxy) {
		t, err := startHAProxy(ctx, ps, haproxyBin, dir, upstream, o.workers, peerConns)
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	if o.want(keyHAProxy1) {
		t, err := startHAProxyAs(ctx, ps, haproxyBin, dir, upstream, 1, peerConns, keyHAProxy1)
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	if o.want(keyCaddy) {
		t, err := startCaddy(ctx, ps, caddyBin, dir, upstream)
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	if o.want(keyRelay) {
		t, err := startRelay(ctx, ps, dir, upstream)
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	for _, k := range []string{keyEpoll, keyEpollRaw} {
		if o.want(k) {
			t, err := startEpollRelay(ctx, ps, dir, upstream, k == keyEpollRaw)
			if err != nil {
				return err
			}
			targets = append(targets, t)
		}
	}
	if world != nil {
		ts, err := startNetnsTargets(ctx, ps, world, fortio, sidecarBin, dir, o, rep.fortioVersion)
		if err != nil {
			return err
		}
		targets = append(targets, ts...)
	}
	if o.httpProxy {
		pts, err := httpProxyTargets(ctx, targets, upstream)
		if err != nil {
			return err
		}
		targets = append(targets, pts...)
	}
	for _, t := range targets {
		logf("%-15s %s", t.name, t.addr)
	}
	rep.targets = targets
	// Idle: every proxy has answered the readiness check and nothing else.
	if err := rep.readUsage(targets, rep.usageIdle); err != nil {
		return err
	}

	runErr := rep.measureAll(ctx, fortio, dir, upstream)
	if runErr == nil && o.fastFailT > 0 && o.want(keyMinimesh) {
		runErr = rep.measureFastFail(ctx, fortio, dir, upstream)
	}
	if runErr == nil && len(o.idleConns) > 0 {
		runErr = rep.measureIdleConns(ctx, ps, dir, upstream, peerBins{sidecar: sidecarBin,
			nginx: nginxBin, haproxy: haproxyBin, caddy: caddyBin})
	}
	ps.stopAll()
	if o.plot && len(rep.samples) > 0 {
		if err := rep.plot(o.plotDir); err != nil {
			logf("plot: %v", err)
			if runErr == nil {
				runErr = fmt.Errorf("plot: %w", err)
			}
		}
	}
	return rep.publish(rep.markdown, runErr)
}

// publish prints the report and writes it to -out, unless runErr ended
// the run before any sample (a report of an aborted run says so); the run
// fails with runErr, else if a target failed a check.
func (rep *report) publish(markdown func() string, runErr error) error {
	if runErr != nil && len(rep.samples) == 0 {
		return runErr
	}
	if runErr != nil {
		rep.aborted = runErr.Error()
	}
	o := rep.o
	md := markdown()
	fmt.Print(md)
	if o.out != "" {
		if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
			return err
		}
		logf("report written to %s", o.out)
	}
	if runErr != nil {
		return runErr
	}
	if f := rep.failures(); len(f) > 0 {
		return fmt.Errorf("FAILED: %s", strings.Join(f, "; "))
	}
	return nil
}

// measureAll runs the warm-up, the fixed-rate rounds and the maximum-rate
// runs, recording them in r.
func (r *report) measureAll(ctx context.Context, fortio, dir, upstream string) error {
	o, targets := r.o, r.targets
	spec := func(t *target, qps float64, d time.Duration) loadSpec {
		host := upstream
		if t.host != "" {
			host = t.host
		}
		if t.viaProxy != nil {
			l := t.viaProxy.spec(qps, o.conns, d, o.resolution)
			l.payload = o.requestBody
			return l
		}
		return loadSpec{qps: qps, conns: o.conns, duration: d, res: o.resolution, addr: t.addr, host: host,
			netns: t.netns, newConn: t.newConn, payload: o.requestBody}
	}
	rate := func(t *target) float64 {
		if t.qps > 0 {
			return t.qps
		}
		return o.qps
	}
	// check runs after every load: a proxy that answered anything but 200
	// gets its breakers' state into the log and the report.
	check := func(t *target, s sample, err error) error {
		if err != nil {
			if d := diagnose(ctx, t); d != "" {
				err = fmt.Errorf("%w\n%s", err, d)
			}
			return err
		}
		if s.errors > 0 {
			logf("%s: %d of %d requests not answered 200: %s", t.name, s.errors, s.requests, codesString(s.codes))
			if d := diagnose(ctx, t); d != "" {
				logf("%s", d)
				r.notes = append(r.notes, d)
			}
		}
		return nil
	}

	if o.warmup > 0 {
		for _, t := range targets {
			logf("warm-up %s (%v)", t.name, o.warmup)
			// Kept as the cold figures: the first load after start.
			s, err := measure(ctx, fortio, dir, t, 0, spec(t, rate(t), o.warmup))
			if err := check(t, s, err); err != nil {
				return err
			}
			r.cold[t.key] = s
		}
	}

	// Rounds: every target once per round and rate, the order rotating so
	// that no target always runs first or right after the same neighbour.
	// -sweep's other rates run only the loopback targets that follow -qps.
	for round := 0; round < o.runs; round++ {
		for _, q := range o.rates() {
			var ts []*target
			for _, t := range targets {
				if q == o.qps || t.sweeps() {
					ts = append(ts, t)
				}
			}
			for i := range ts {
				t := ts[(i+round)%len(ts)]
				qt := q
				if q == o.qps {
					qt = rate(t)
				}
				s, err := measure(ctx, fortio, dir, t, round+1, spec(t, qt, o.duration))
				if err := check(t, s, err); err != nil {
					return err
				}
				logf("run %d/%d %-15s %5s rps  p50 %s p99 %s  %.0f qps  %d errors", round+1, o.runs, t.name,
					strconv.FormatFloat(qt, 'f', -1, 64), ms(s.lat[50]), ms(s.lat[99]), s.qps, s.errors)
				r.add(t.key, s)
			}
		}
	}

	// Peak memory at the fixed rate, before the maximum-rate runs push it
	// up.
	if err := r.readUsage(targets, r.usage); err != nil {
		return err
	}

	// The maximum rate of every loopback target (direct and each proxy;
	// not the HTTP_PROXY path's standard client, nor the namespaces).
	var maxTargets []*target
	for _, t := range targets {
		if t.sweeps() {
			maxTargets = append(maxTargets, t)
		}
	}
	if o.maxDuration > 0 && len(maxTargets) > 1 {
		for round := 0; round < o.runs; round++ {
			for i := range maxTargets {
				t := maxTargets[(i+round)%len(maxTargets)]
				// Where the machine's time went: at the maximum rate the
				// load generator, the upstream and the proxy share the
				// cores, and each one's CPU per request moves the rate.
				// A reading that fails leaves the run without them.
				m0, err0 := r.machineNow()
				s, err := measure(ctx, fortio, dir, t, round+1, spec(t, 0, o.maxDuration))
				if err := check(t, s, err); err != nil {
					return err
				}
				if m1, err1 := r.machineNow(); err0 == nil && err1 == nil {
					s.machine, s.upstreamCPU = m1.Sub(m0.Machine), m1.upstream-m0.upstream
				}
				logf("max %d/%d %-15s %.0f qps  %d errors", round+1, o.runs, t.name, s.qps, s.errors)
				r.addMax(t.key, s)
			}
		}
	}
	return r.readUsage(targets, r.usageAfterMax)
}

// machineNow is the machine's CPU time so far and the upstream's.
type machineNow struct {
	proc.Machine
	upstream time.Duration
}

func (r *report) machineNow() (machineNow, error) {
	if r.upstream == nil {
		return machineNow{}, errors.New("no upstream process")
	}
	m, err := proc.ReadMachine("/proc")
	if err != nil {
		return machineNow{}, err
	}
	u, err := r.upstream.Usage()
	return machineNow{Machine: m, upstream: u.CPU}, err
}

// diagnose returns the sidecar's view of its destinations (its breakers),
// or "" for other targets.
func diagnose(ctx context.Context, t *target) string {
	if t.admin == "" {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	body, err := getBody(ctx, t.httpClient(), "http://"+t.admin+"/debug/breakers")
	if err != nil {
		return fmt.Sprintf("%s GET /debug/breakers: %v", t.name, err)
	}
	var compact bytes.Buffer
	if json.Compact(&compact, []byte(body)) == nil {
		body = compact.String()
	}
	return fmt.Sprintf("%s GET /debug/breakers: %s", t.name, strings.TrimSpace(body))
}

// measure runs one load against t and reads the proxy's CPU time around it.
func measure(ctx context.Context, fortio, dir string, t *target, run int, l loadSpec) (sample, error) {
	var before proc.Usage
	var err error
	peak := false // the peak RSS reset: its next reading is this run's
	if t.proc != nil {
		peak = t.proc.ResetPeak() == nil
		if before, err = t.proc.Usage(); err != nil {
			return sample{}, fmt.Errorf("%s: %w", t.name, err)
		}
	}
	res, err := runLoad(ctx, fortio, dir, l)
	if err != nil {
		return sample{}, err
	}
	s := toSample(t.name, run, res)
	s.rate = l.qps
	if t.proc != nil {
		if err := t.proc.Alive(); err != nil {
			return sample{}, err
		}
		after, err := t.proc.Usage()
		if err != nil {
			return sample{}, fmt.Errorf("%s: %w", t.name, err)
		}
		s.cpu, s.user, s.hasCPU = after.CPU-before.CPU, after.User-before.User, true
		s.switches = after.Switches - before.Switches
		if peak {
			s.peakRSS = after.PeakRSS
		}
	}
	return s, nil
}

// checkSidecar sends one request through the sidecar and checks that it
// reached the upstream and came back through the sidecar.
func checkSidecar(ctx context.Context, t *target, upstream string) error {
	resp, err := getVia(ctx, t.httpClient(), "http://"+t.addr+"/", upstream)
	if err != nil {
		return fmt.Errorf("request through minimesh-proxy: %w", err)
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("request through minimesh-proxy to %s: %s (X-Minimesh-Error: %q); its output:\n%s",
			upstream, resp.Status, resp.Header.Get("X-Minimesh-Error"), t.proc.Output())
	}
	if resp.Header.Get("X-Request-ID") == "" {
		if t.netns != "" {
			// In a namespace, the sign that the request went through the
			// sidecar at all (the redirect worked): without it the
			// figures would be direct's.
			return fmt.Errorf("%s: the response to GET http://%s/ (Host %s) has no X-Request-ID: it did not come through the sidecar", t.name, t.addr, upstream)
		}
		logf("warning: the sidecar's response has no X-Request-ID header")
	}
	return nil
}

// variant is one more sidecar with extra arguments, e.g. tracing on.
// injectedEnv is the sidecar's Go runtime environment as the injector
// sets it under its default CPU limit (one core: GOMAXPROCS=1 GOGC=50,
// docs/annotations.md): the harness measures the sidecar users run.
var injectedEnv = func() string {
	p := injector.DefaultConfig().Proxy
	request, limit := resource.MustParse(p.CPURequest), resource.MustParse(p.CPULimit)
	var kv []string
	for _, e := range injector.RuntimeEnv(&request, &limit) {
		kv = append(kv, e.Name+"="+e.Value)
	}
	return strings.Join(kv, " ")
}()

type variant struct{ name, args string }

type variantFlag []variant

func (v *variantFlag) String() string { return "" }

func (v *variantFlag) Set(s string) error {
	name, args, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return fmt.Errorf("want NAME=ARGS, got %q", s)
	}
	*v = append(*v, variant{name, args})
	return nil
}

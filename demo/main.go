// Command demo is minimesh's showcase: a tenant service that geocodes
// bakeries through Nominatim, with no resilience code of its own, while a
// real minimesh-proxy sidecar breaks the circuit when Nominatim fails.
//
//	go run ./demo            (or: make demo)
//
// Everything runs on loopback, in about a minute, with nothing but Go: the
// flaky Nominatim stand-in and the tenant app run in this process, the
// sidecar is the real binary in a subprocess. See docs/demo.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// interval is how often the tenant registers a bakery.
const interval = 300 * time.Millisecond

type config struct {
	ProxyBin string        // minimesh-proxy binary
	Duration time.Duration // of the story
}

func main() {
	var cfg config
	flag.StringVar(&cfg.ProxyBin, "proxy-bin", "bin/minimesh-proxy",
		"minimesh-proxy binary; relative to the repo root. When the default is missing, the demo builds it with `go build`")
	flag.DurationVar(&cfg.Duration, "duration", baseDuration,
		fmt.Sprintf("length of the demo (at least %s); the script and the breaker's open timeout scale with it", minDuration))
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	os.Exit(demo(ctx, cfg))
}

func demo(ctx context.Context, cfg config) int {
	bin, cleanup, err := resolveProxyBin(cfg.ProxyBin, flagWasSet("proxy-bin"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	defer cleanup()
	cfg.ProxyBin = bin

	rep, err := run(ctx, cfg, os.Stdout)
	switch {
	case rep == nil:
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	case rep.Interrupted:
		return 130
	case !rep.ok():
		return 1
	}
	return 0
}

func flagWasSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// resolveProxyBin finds the sidecar binary, or builds it into a temporary
// directory when the default path holds none (`go run ./demo` without a
// prior `make build`).
func resolveProxyBin(value string, explicit bool) (bin string, cleanup func(), err error) {
	cleanup = func() {}
	bin, err = findProxyBin(value)
	if err != nil {
		return "", cleanup, err
	}
	if _, err := os.Stat(bin); err == nil || explicit {
		return bin, cleanup, err
	}
	root, ok := moduleRoot()
	if !ok {
		return "", cleanup, fmt.Errorf("%s not found; build it with `make build` or pass -proxy-bin", bin)
	}
	dir, err := os.MkdirTemp("", "minimesh-demo-bin-")
	if err != nil {
		return "", cleanup, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	fmt.Printf("%s is missing: building the sidecar with go build...\n", bin)
	bin, err = buildProxy(root, dir)
	return bin, cleanup, err
}

// run plays the story once and reports what happened. It returns a nil
// report only when the demo could not start at all.
func run(ctx context.Context, cfg config, out io.Writer) (*report, error) {
	if cfg.Duration < minDuration {
		return nil, fmt.Errorf("-duration %s is too short: at least %s", cfg.Duration, minDuration)
	}
	st := newStory(cfg.Duration)
	scr := newScreen(out)

	// 1. The flaky Nominatim.
	nom, err := startNominatim(st)
	if err != nil {
		return nil, err
	}
	defer nom.close()

	// 2. The policy.
	dir, err := os.MkdirTemp("", "minimesh-demo-policies-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	policyFile := dir + string(os.PathSeparator) + "nominatim.yaml"
	if err := os.WriteFile(policyFile, []byte(policyYAML(st.OpenTimeout)), 0o644); err != nil {
		return nil, err
	}

	// 3. The sidecar.
	sc, err := startSidecar(cfg.ProxyBin, dir, nom.addr)
	if err != nil {
		return nil, fmt.Errorf("start %s: %v", cfg.ProxyBin, err)
	}
	defer sc.stop(2 * time.Second) // only does something on early returns
	if err := sc.waitReady(ctx, 15*time.Second); err != nil {
		sc.stop(2 * time.Second)
		return nil, fmt.Errorf("%v\nsidecar output:\n%s", err, indent(sc.log.String()))
	}

	// 4. The tenant's environment, as the injector would set it.
	if err := setProxyEnv("http://" + sc.outbound); err != nil {
		sc.stop(2 * time.Second)
		return nil, err
	}
	app := newGeocoder()

	intro(scr, cfg, st, sc, nom, policyFile)

	// 5. The story.
	start := time.Now()
	nom.begin(start)
	trk := &tracker{scr: scr, start: start, openTimeout: st.OpenTimeout}
	rep := &report{Story: st}

	var display sync.Mutex // keeps a request's line and its banners together
	pollDone := make(chan struct{})
	pollStop := make(chan struct{})
	go func() { // watch the breaker between requests too
		defer close(pollDone)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-pollStop:
				return
			case <-t.C:
			}
			if v, err := sc.breaker(); err == nil {
				display.Lock()
				trk.observe(v)
				display.Unlock()
			}
		}
	}()
	scr.banner(0, green, st.Phases[0].Banner)
	scr.printf("%s\n", scr.paint(dim, columns))
	go func() { // announce the upstream's phases
		for _, p := range st.Phases[1:] {
			select {
			case <-pollStop:
				return
			case <-time.After(time.Until(start.Add(p.At))):
			}
			code := green
			switch {
			case p.Mode.outage():
				code = red
			case p.Mode == hiccup:
				code = yellow
			}
			display.Lock()
			scr.banner(time.Since(start), code, p.Banner)
			display.Unlock()
		}
	}()

	// Requests get the tenant's context; the demo cancels those still
	// hanging when it stops (the tenant itself never gives up).
	reqCtx, cancelReqs := context.WithCancel(context.Background())
	defer cancelReqs()
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		all []*outcome
	)
	send := func(n int) {
		defer wg.Done()
		o := &outcome{N: n, At: time.Since(start)}
		o.Mode = st.modeAt(o.At)
		b := bakeries[(n-1)%len(bakeries)]
		o.Bakery = b.Name
		if n%2 == 1 { // registrations that came through the gateway carry an ID
			o.SentID = fmt.Sprintf("reg-%04d", n)
		}
		t0 := time.Now()
		g, err := app.geocode(reqCtx, b.Address, o.SentID)
		o.Latency = time.Since(t0)
		o.Done = time.Since(start)
		if err != nil {
			o.Err = err
		}
		if g != nil {
			o.Status = g.Status
			o.RespID = g.Header.Get("X-Request-ID")
			o.MeshErr = g.Header.Get("X-Minimesh-Error")
			o.Places = g.Places
		}
		display.Lock()
		o.Breaker, o.BreakerErr = sc.breaker()
		scr.requestLine(o)
		if o.BreakerErr == nil {
			trk.observe(o.Breaker)
		}
		display.Unlock()
		mu.Lock()
		all = append(all, o)
		mu.Unlock()
	}

	end := time.NewTimer(st.Duration)
	defer end.Stop()
	tick := time.NewTicker(interval)
	defer tick.Stop()
loop:
	for n := 1; ; n++ {
		wg.Add(1)
		go send(n)
		select {
		case <-tick.C:
		case <-end.C:
			break loop
		case <-ctx.Done():
			rep.Interrupted = true
			break loop
		case <-sc.exited:
			rep.SidecarDied = true
			break loop
		}
	}

	// 6. Stop: let the last requests finish (a hanging one may take the
	// policy's 2 s timeout), then read the breaker's final state and the
	// metrics, then SIGTERM the sidecar.
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	grace := 5 * time.Second
	if rep.Interrupted || rep.SidecarDied {
		grace = 0
	}
	select {
	case <-waited:
	case <-time.After(grace):
		cancelReqs()
		<-waited
	}
	close(pollStop)
	<-pollDone

	rep.Elapsed = time.Since(start)
	rep.Outcomes = all
	rep.Hits, rep.Answers = nom.counts()
	rep.HiccupDone = nom.hiccupDone()
	for _, o := range all {
		if o.MeshErr == "circuit-open" && o.RespID != "" && nom.saw(o.RespID) {
			rep.LeakedFastFails++
		}
	}
	if sc.alive() {
		if v, err := sc.breaker(); err == nil && v != nil {
			display.Lock()
			trk.observe(v)
			display.Unlock()
			rep.FinalState = v.State
		}
		rep.Metrics, rep.MetricsErr = sc.transitions()
	}
	rep.Observed = trk.transitions()
	rep.EverOpen = trk.everOpen

	if rep.SidecarDied {
		rep.SidecarExit = fmt.Errorf("%w (%s)", errSidecarDied, sc.exitStatus())
	} else {
		t0 := time.Now()
		if err := sc.stop(15 * time.Second); err != nil {
			rep.SidecarExit = fmt.Errorf("after SIGTERM: %v", err)
		}
		rep.SidecarStopTook = time.Since(t0)
	}
	if rep.SidecarExit != nil {
		rep.SidecarLog = sc.log.String()
	}
	rep.evaluate()
	summary(scr, rep)
	if rep.Interrupted {
		return rep, errors.New("interrupted")
	}
	return rep, nil
}

// setProxyEnv points the tenant at the sidecar the way the injector does
// (HTTP_PROXY), and checks that net/http will honour it: ProxyFromEnvironment
// reads the environment once, on first use.
func setProxyEnv(proxy string) error {
	for k, v := range map[string]string{
		"HTTP_PROXY": proxy, "http_proxy": proxy,
		"NO_PROXY": "", "no_proxy": "", "REQUEST_METHOD": "",
	} {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	u, _ := url.Parse(nominatimURL + "/search")
	got, err := http.ProxyFromEnvironment(&http.Request{URL: u})
	if err != nil || got == nil || got.String() != proxy {
		return fmt.Errorf("net/http does not send %s through HTTP_PROXY=%s (got %v, %v): was the environment read before the demo set it?", nominatimURL, proxy, got, err)
	}
	return nil
}

func intro(scr *screen, cfg config, st story, sc *sidecar, nom *nominatim, policyFile string) {
	p := func(label, text string) {
		scr.printf("  %s %s\n", scr.pad(bold, label, 11), text)
	}
	scr.printf("%s\n\n", scr.paint(bold, "minimesh demo: the tenant service geocodes bakeries through nominatim-service:8000"))
	p("tenant", "a plain net/http client, no breaker, no retries, no timeout; it only honours HTTP_PROXY="+"http://"+sc.outbound)
	p("sidecar", fmt.Sprintf("%s (pid %d): outbound %s, admin %s", cfg.ProxyBin, sc.cmd.Process.Pid, sc.outbound, sc.admin))
	p("nominatim", fmt.Sprintf("a flaky stand-in on %s (the sidecar's --resolve %s=%s); a search takes 30–50ms", nom.addr, destination, nom.addr))
	p("policy", policyFile+":")
	for _, l := range splitLines(policyYAML(st.OpenTimeout)) {
		scr.printf("      %s\n", scr.paint(cyan, l))
	}
	if loaded := sc.loadedPolicies(); loaded != "" {
		scr.printf("      %s\n", scr.paint(dim, "the sidecar's /debug/config: "+loaded))
	}
	scr.printf("  %s\n", scr.paint(yellow, fmt.Sprintf(
		"note: openTimeout is %s so that open → half-open → closed fits in the demo; the production default is 60s.", st.OpenTimeout)))
	script := ""
	for _, ph := range st.Phases {
		script += fmt.Sprintf("%s at %s · ", ph.Mode, ph.At)
	}
	p("script", script+fmt.Sprintf("stop at %s", st.Duration))
	scr.printf("\n")
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}

func indent(s string) string {
	out := ""
	for _, l := range splitLines(s) {
		out += "    " + l + "\n"
	}
	return out
}

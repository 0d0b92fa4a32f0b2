package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/wellknown"
)

// Targets of minimesh-proxy, and what other meshes' data planes use, for
// scale.
const (
	targetP99Added = 500 * time.Microsecond
	targetCores    = 0.06 // cores per 1,000 requests per second
	targetRSS      = 15e6 // bytes
)

type report struct {
	o              *options
	command        string
	start          time.Time
	loadAvg        string
	fortioVersion  string
	targets        []*target
	samples        map[string][]sample // by target key
	maxSamples     map[string][]sample
	usage          map[string]proc.Usage // after the fixed-rate rounds
	usageAfterMax  map[string]proc.Usage // after the maximum-rate runs too
	usageIdle      map[string]proc.Usage // after start, before any load
	fastFail       []sample              // the open breaker's runs
	fastFailDirect []sample              // direct with the same client, next to them
	idle           []idleResult          // -idle-conns
	idleNote       string                // why -idle-conns was skipped
	cold           map[string]sample     // the warm-up runs: the first load after start
	aborted        string                // why the runs stopped before the end
	notes          []string              // the sidecar's state after runs with errors
	upstream       *proc.Proc            // the upstream's process, for its CPU at the maximum rate
}

// loadAvg is the 1, 5 and 15 minute load averages.
func loadAvg() string {
	la, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(la))
	if len(f) > 3 {
		f = f[:3]
	}
	return strings.Join(f, " ")
}

func newReport(o *options) *report {
	return &report{o: o, command: commandLine(os.Args), start: time.Now().UTC(),
		loadAvg: loadAvg(),
		samples: map[string][]sample{}, maxSamples: map[string][]sample{},
		usage: map[string]proc.Usage{}, usageAfterMax: map[string]proc.Usage{}, usageIdle: map[string]proc.Usage{}, cold: map[string]sample{}}
}

// readUsage records each proxy's usage so far in into.
func (r *report) readUsage(targets []*target, into map[string]proc.Usage) error {
	for _, t := range targets {
		if t.proc == nil {
			continue
		}
		if err := t.proc.Alive(); err != nil {
			return err
		}
		u, err := t.proc.Usage()
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		// measure resets the peak before each run: VmHWM now is the
		// peak since the last run began, and the runs' own peaks hold
		// the rest.
		u.PeakRSS = max(u.PeakRSS, r.runsPeak(t))
		into[t.key] = u
	}
	return nil
}

// runsPeak is the highest peak RSS of the runs so far of t's process
// (targets that share it, such as the HTTP_PROXY path's, included).
func (r *report) runsPeak(t *target) int64 {
	var peak int64
	for _, u := range r.targets {
		if u.proc != t.proc {
			continue
		}
		for _, ss := range [][]sample{r.samples[u.key], r.maxSamples[u.key], {r.cold[u.key]}} {
			for _, s := range ss {
				peak = max(peak, s.peakRSS)
			}
		}
	}
	if m := r.target(keyMinimesh); m != nil && m.proc == t.proc {
		for _, s := range r.fastFail { // runs of the sidecar's own process
			peak = max(peak, s.peakRSS)
		}
	}
	return peak
}

func (r *report) add(key string, s sample)    { r.samples[key] = append(r.samples[key], s) }
func (r *report) addMax(key string, s sample) { r.maxSamples[key] = append(r.maxSamples[key], s) }

// commandLine is how the harness was started, as one would type it again:
// under `go run` the program is a temporary file, shown as its package.
func commandLine(args []string) string {
	prog := args[0]
	if strings.Contains(prog, "go-build") || filepath.Base(prog) == "bench" {
		prog = "go run ./e2e/bench"
	}
	parts := []string{prog}
	for _, a := range args[1:] {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./=:,+@%", c))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// summary is one target's medians over the rounds.
type summary struct {
	t        *target
	lat      map[float64]time.Duration
	qps      float64
	errors   int64
	cpuPer1k time.Duration
	// userPer1k is cpuPer1k's user-mode part: where proxies differ most
	// (the kernel's share of a forwarded request is much the same for
	// each; docs/benchmarks.md).
	userPer1k time.Duration
	// switches is the proxy's context switches per request.
	switches float64
	hasCPU   bool
	// peakRSS is the highest of the runs' peak RSS at this rate (each
	// run's VmHWM, reset before it): the proxy's peak at the rate, not
	// over its life.
	peakRSS  int64
	usage    proc.Usage
	hasUsage bool
	// The maximum rate's runs: the machine's busy share of its cores'
	// time, and per 1,000 requests its busy time, the upstream's CPU and
	// the load generator's.
	busyShare                              float64
	machinePer1k, upstreamPer1k, loadPer1k time.Duration
	hasMachine                             bool
}

// peakAtRate is the proxy's peak RSS at the summary's rate, or, where
// the runs could not reset it, its peak over the fixed-rate rounds.
func (s *summary) peakAtRate() int64 {
	if s.peakRSS > 0 {
		return s.peakRSS
	}
	return s.usage.PeakRSS
}

func (r *report) summarize(t *target) *summary { return r.summarizeAt(t, r.rate(t)) }

// summarizeAt is t's medians over its runs at rate q (0: the maximum
// rate's runs).
func (r *report) summarizeAt(t *target, q float64) *summary {
	ss := r.atRate(t, q)
	sm := &summary{t: t, lat: map[float64]time.Duration{}}
	if len(ss) == 0 {
		return sm
	}
	for _, p := range percentiles {
		var ds []time.Duration
		for _, s := range ss {
			ds = append(ds, s.lat[p])
		}
		sm.lat[p] = medianDur(ds)
	}
	var qps []float64
	var cpu, user []time.Duration
	var sw []float64
	for _, s := range ss {
		qps = append(qps, s.qps)
		sm.errors += s.errors
		sm.peakRSS = max(sm.peakRSS, s.peakRSS)
		if s.hasCPU {
			cpu = append(cpu, s.cpuPer1k())
			user = append(user, s.userPer1k())
			sw = append(sw, s.switchesPerReq())
		}
	}
	sm.qps = median(qps)
	if len(cpu) > 0 {
		sm.cpuPer1k, sm.userPer1k, sm.switches, sm.hasCPU = medianDur(cpu), medianDur(user), median(sw), true
	}
	var busy []float64
	var machine, upstream, load []time.Duration
	for _, s := range ss {
		if s.machine.All > 0 && s.loadCPU > 0 {
			busy = append(busy, float64(s.machine.Busy)/float64(s.machine.All))
			machine = append(machine, s.per1k(s.machine.Busy))
			upstream = append(upstream, s.per1k(s.upstreamCPU))
			load = append(load, s.per1k(s.loadCPU))
		}
	}
	if len(busy) > 0 {
		sm.busyShare, sm.hasMachine = median(busy), true
		sm.machinePer1k, sm.upstreamPer1k, sm.loadPer1k = medianDur(machine), medianDur(upstream), medianDur(load)
	}
	sm.usage, sm.hasUsage = r.usage[t.key]
	return sm
}

// atRate is t's runs at rate q (0: the maximum rate's runs).
func (r *report) atRate(t *target, q float64) []sample {
	if q == 0 {
		return r.maxSamples[t.key]
	}
	var ss []sample
	for _, s := range r.samples[t.key] {
		// A sample without its rate (the tests') is at t's rate.
		if s.rate == q || s.rate == 0 && q == r.rate(t) {
			ss = append(ss, s)
		}
	}
	return ss
}

// slowRuns are the fixed-rate runs that fell short of the requested rate.
func (r *report) slowRuns() []string {
	var slow []string
	for _, t := range r.targets {
		for _, s := range r.samples[t.key] {
			q := s.rate
			if q == 0 {
				q = r.rate(t)
			}
			if s.qps < 0.97*q {
				slow = append(slow, fmt.Sprintf("round %d %s (%.0f requests/s)", s.run, t.name, s.qps))
			}
		}
	}
	return slow
}

// failures are the reasons the run must not pass: any request not
// answered 200.
func (r *report) failures() []string {
	var f []string
	check := func(kind string, ss []sample) {
		for _, s := range ss {
			if s.errors > 0 {
				f = append(f, fmt.Sprintf("%s round %d %s: %d of %d requests not answered 200 (%s)",
					kind, s.run, s.target, s.errors, s.requests, codesString(s.codes)))
			}
		}
	}
	for _, t := range r.targets {
		check("fixed-rate", r.samples[t.key])
		check("maximum-rate", r.maxSamples[t.key])
	}
	for _, s := range r.fastFailDirect {
		if s.errors > 0 {
			f = append(f, fmt.Sprintf("fast-fail round %d direct: %d of %d requests not answered 200 (%s)",
				s.run, s.errors, s.requests, codesString(s.codes)))
		}
	}
	for _, s := range r.fastFail {
		if s.errors > 0 {
			f = append(f, fmt.Sprintf("fast-fail round %d: %d of %d requests not answered 503 by the open breaker (%s)",
				s.run, s.errors, s.requests, codesString(s.codes)))
		}
	}
	return f
}

// rate is t's fixed request rate.
func (r *report) rate(t *target) float64 {
	if t.qps > 0 {
		return t.qps
	}
	return r.o.qps
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond)) }

func plusMs(d time.Duration) string {
	s := ms(d)
	if d >= 0 {
		s = "+" + s
	}
	return s
}

func mb(bytes int64) string { return fmt.Sprintf("%.1f", float64(bytes)/1e6) }

// cores is CPU time per 1,000 requests read as cores busy at 1,000
// requests per second.
func cores(per1k time.Duration) float64 { return per1k.Seconds() }

func ratio(a, b float64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return "Linux " + strings.TrimSpace(string(b))
}

func (r *report) markdown() string {
	o := r.o
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	row := func(cells ...string) { w("| %s |\n", strings.Join(cells, " | ")) }

	sums := map[string]*summary{}
	for _, t := range r.targets {
		sums[t.key] = r.summarize(t)
	}
	direct := sums[keyDirect]
	side := sums[keyMinimesh]
	rate := strconv.FormatFloat(o.qps, 'f', -1, 64)

	w("# minimesh-proxy benchmark\n\n")
	if r.aborted != "" {
		w("**ABORTED: the runs stopped before the end; the figures below are partial and do not count.**\n\n")
		w("```\n%s\n```\n\n", r.aborted)
	}
	if f := r.failures(); len(f) > 0 {
		w("**FAILED: requests were not answered 200; the figures below do not count.**\n\n")
		for _, x := range f {
			w("- %s\n", x)
		}
		for _, x := range r.notes {
			w("- %s\n", x)
		}
		w("\n")
	}
	w("- Command: `%s`\n", r.command)
	w("- Date: %s (took %s)\n", r.start.Format(time.RFC3339), time.Since(r.start).Round(time.Second))
	w("- Machine: nproc %d, %s, %s; load average %s at start, %s at the end\n",
		runtime.NumCPU(), cpuModel(), kernel(), r.loadAvg, loadAvg())
	w("- Go: %s\n", runtime.Version())
	w("- Load: fortio %s, %s requests/s at a fixed rate (`-uniform`), %d connections, %v per run, "+
		"%d rounds (the tables give medians), %v warm-up per target first; histogram resolution %s ms, percentiles interpolated within buckets\n",
		r.fortioVersion, rate, o.conns, o.duration, o.runs, o.warmup,
		strconv.FormatFloat(o.resolution*1000, 'f', -1, 64))
	if o.requestBody > 0 {
		w("- Requests: POST with a %d-byte body (fortio `-payload-size`), but the fast fail's GETs\n", o.requestBody)
	}
	w("- Upstream: fortio echo server on loopback, 200 with a %d-byte body; every request carries `Host: <upstream>`\n", o.bodySize)
	if o.transparent {
		w("- Namespaces (`-transparent`): the (netns) targets' fortio runs in a pod network namespace with `minimesh-proxy init`'s rules; "+
			"the upstream, the same echo server, in a peer namespace across a veth pair; the sidecar in the pod as uid %d serves both the explicit and the transparent target\n",
			wellknown.ProxyUID)
	}
	w("\n")

	if slow := r.slowRuns(); len(slow) > 0 {
		w("**Noisy:** these runs did not reach 97%% of the requested rate, a sign that the machine was busy "+
			"with something else; their figures, and the medians, may not be representative: %s.\n\n",
			strings.Join(slow, "; "))
	}

	w("## Latency at %s requests/s\n\n", rate)
	w("Milliseconds, median over the rounds of each run's percentile. Errors: responses other than 200, summed over the rounds (must be 0).\n\n")
	row("scenario", "p50", "p90", "p99", "p99.9", "achieved qps", "errors")
	row("---", "---:", "---:", "---:", "---:", "---:", "---:")
	for _, t := range r.targets {
		s := sums[t.key]
		row(t.name, ms(s.lat[50]), ms(s.lat[90]), ms(s.lat[99]), ms(s.lat[99.9]),
			fmt.Sprintf("%.1f", s.qps), strconv.FormatInt(s.errors, 10))
	}
	w("\n")

	if len(r.targets) > 1 {
		w("## Added latency vs direct\n\n")
		if o.transparent || o.httpProxy {
			w("Milliseconds: the scenario's median percentile minus that of the scenario in the last column.\n\n")
			row("scenario", "p50", "p90", "p99", "p99.9", "against")
			row("---", "---:", "---:", "---:", "---:", "---")
		} else {
			w("Milliseconds: the scenario's median percentile minus direct's.\n\n")
			row("scenario", "p50", "p90", "p99", "p99.9")
			row("---", "---:", "---:", "---:", "---:")
		}
		for _, t := range r.targets[1:] {
			s, base := sums[t.key], sums[t.baseKey()]
			if base == nil || base.t == t {
				continue
			}
			cells := []string{t.name, plusMs(s.lat[50] - base.lat[50]), plusMs(s.lat[90] - base.lat[90]),
				plusMs(s.lat[99] - base.lat[99]), plusMs(s.lat[99.9] - base.lat[99.9])}
			if o.transparent || o.httpProxy {
				cells = append(cells, base.t.name)
			}
			row(cells...)
		}
		w("\n")

		w("## Cost of each proxy\n\n")
		w("CPU: user + system time of the proxy's processes (/proc/PID/stat) during each run, per 1,000 requests, median over the rounds; " +
			"the same number in seconds is the cores the proxy keeps busy at 1,000 requests/s; of it in user mode: the utime part alone (the rest is the kernel's). " +
			"Context switches: voluntary and not, of every thread of the proxy's processes (/proc/PID/task/TID/status) during each run, per request, median over the rounds: " +
			"a count the machine's noise moves far less than CPU time. " +
			"Peak RSS: VmHWM (/proc/PID/status) summed over the proxy's processes (nginx: master and workers), reset before each run (/proc/PID/clear_refs): the highest of the rounds at this rate; " +
			"where it could not be reset, VmHWM after the fixed-rate rounds. MB = 10⁶ bytes. " +
			"The ratios are minimesh-proxy's figure divided by the other proxy's.\n\n")
		row("proxy", "CPU ms / 1,000 requests", "of it in user mode", "cores at 1,000 rps", "context switches / request", "peak RSS MB", "processes", "CPU ratio", "RSS ratio")
		row("---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:")
		for _, t := range r.targets[1:] {
			s := sums[t.key]
			if t.proc == nil && !s.hasCPU {
				continue // no proxy: direct (netns)
			}
			cpuR, rssR := "–", "–"
			// The HTTP_PROXY path's rows against the sidecar's on that path.
			sd := side
			if t.viaProxy != nil {
				sd = sums[keyMinimesh+proxySuffix]
			}
			if sd != nil && sd.t != t && t.netns == "" {
				cpuR = ratio(float64(sd.cpuPer1k), float64(s.cpuPer1k))
				rssR = ratio(float64(sd.peakAtRate()), float64(s.peakAtRate()))
			}
			row(t.name, fmt.Sprintf("%.1f", float64(s.cpuPer1k)/float64(time.Millisecond)), cpuMs(s.userPer1k),
				fmt.Sprintf("%.3f", cores(s.cpuPer1k)), fmt.Sprintf("%.2f", s.switches), mb(s.peakAtRate()), strconv.Itoa(s.usage.Procs), cpuR, rssR)
		}
		w("\n")
	}

	r.noiseAndCold(&b)
	if len(o.sweep) > 0 {
		r.sweepSection(&b)
	}
	r.maxSection(&b)
	r.memorySection(&b)
	r.fastFailSection(&b)

	if side != nil {
		added := side.lat[99] - direct.lat[99]
		c := cores(side.cpuPer1k)
		w("## Targets\n\n")
		row("target", "measured", "met")
		row("---", "---:", "---")
		row(fmt.Sprintf("p99 added at %s requests/s < 0.5 ms", rate), plusMs(added)+" ms", yesNo(added < targetP99Added))
		row("CPU < 0.06 core per 1,000 requests/s (60 ms CPU per 1,000 requests)", fmt.Sprintf("%.3f core", c), yesNo(c < targetCores))
		if side.peakRSS > 0 {
			row(fmt.Sprintf("peak RSS at %s requests/s < 15 MB (the highest of the rounds)", rate), mb(side.peakRSS)+" MB", yesNo(float64(side.peakRSS) < targetRSS))
		}
		row("peak RSS < 15 MB over the fixed-rate rounds", mb(side.usage.PeakRSS)+" MB", yesNo(float64(side.usage.PeakRSS) < targetRSS))
		r.peerTargets(row, sums)
		w("\nFor scale: Istio's sidecar Envoy uses about 0.20 vCPU and 60 MB per 1,000 requests/s, ztunnel about 0.06 vCPU and 12 MB.\n\n")
	}

	if o.transparent {
		r.transparentSection(&b, sums)
	}

	w("## Setup\n\n")
	row("scenario", "version", "configuration")
	row("---", "---", "---")
	for _, t := range r.targets {
		row(t.name, t.version, t.config)
	}
	w("\n")

	w("## Every run\n\n")
	row("round", "scenario", "rate", "p50", "p90", "p99", "p99.9", "achieved qps", "errors", "proxy CPU ms / 1,000 requests", "proxy peak RSS MB")
	row("---:", "---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:")
	for round := 1; round <= o.runs; round++ {
		for _, kind := range []struct {
			rate string
			by   map[string][]sample
		}{{rate, r.samples}, {"max", r.maxSamples}} {
			for _, t := range r.targets {
				for _, s := range kind.by[t.key] {
					if s.run != round {
						continue
					}
					rate := kind.rate
					if rate != "max" {
						q := s.rate
						if q == 0 {
							q = r.rate(t)
						}
						rate = strconv.FormatFloat(q, 'f', -1, 64)
					}
					cpu, rss := "–", "–"
					if s.hasCPU {
						cpu = fmt.Sprintf("%.1f", float64(s.cpuPer1k())/float64(time.Millisecond))
					}
					if s.peakRSS > 0 {
						rss = mb(s.peakRSS)
					}
					row(strconv.Itoa(round), t.name, rate, ms(s.lat[50]), ms(s.lat[90]), ms(s.lat[99]), ms(s.lat[99.9]),
						fmt.Sprintf("%.1f", s.qps), strconv.FormatInt(s.errors, 10), cpu, rss)
				}
			}
		}
	}
	return b.String()
}

// transparentSection is -transparent's comparison: the explicit and the
// transparent path against direct in the same namespaces, with keep-alive
// at -qps and with a new connection per request at -newconn-qps.
func (r *report) transparentSection(b *strings.Builder, sums map[string]*summary) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	row := func(cells ...string) { w("| %s |\n", strings.Join(cells, " | ")) }
	ratioDur := func(a, b time.Duration) string {
		if b <= 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", float64(a)/float64(b))
	}
	w("## Transparent interception\n\n")
	w("The (netns) targets: fortio in the pod namespace; the upstream across the veth pair. " +
		"Explicit: requests to the sidecar's 127.0.0.1:15001 with `Host: <upstream>`, as through `HTTP_PROXY`. " +
		"Transparent: requests to the upstream's address, redirected to the same sidecar by the pod's rules (one `SO_ORIGINAL_DST` and protocol detection per connection). " +
		"Medians over the rounds; \"× direct\" is the figure divided by direct (netns)'s with the same connection handling, in the same run; added is the difference. " +
		"With a new connection per request (`-keepalive=false`) each request's latency runs from connect to the response read.\n\n")
	row("connections", "path", "p50 ms", "p99 ms", "p50 × direct", "p99 × direct", "added p50 ms", "added p99 ms", "CPU ms / 1,000 requests", "achieved qps", "errors")
	row("---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:")
	for _, suffix := range []string{"", newConnSuffix} {
		direct := sums[keyNetnsDirect+suffix]
		if direct == nil {
			continue
		}
		conns := fmt.Sprintf("keep-alive, %s requests/s", strconv.FormatFloat(r.rate(direct.t), 'f', -1, 64))
		if suffix != "" {
			conns = fmt.Sprintf("new per request, %s requests/s", strconv.FormatFloat(r.rate(direct.t), 'f', -1, 64))
		}
		for _, k := range netnsKeys {
			s := sums[k+suffix]
			if s == nil {
				continue
			}
			cpu := "–"
			if s.hasCPU {
				cpu = fmt.Sprintf("%.1f", float64(s.cpuPer1k)/float64(time.Millisecond))
			}
			added50, added99 := "–", "–"
			if k != keyNetnsDirect {
				added50, added99 = plusMs(s.lat[50]-direct.lat[50]), plusMs(s.lat[99]-direct.lat[99])
			}
			row(conns, strings.TrimSuffix(strings.TrimPrefix(k, "netns-"), suffix), ms(s.lat[50]), ms(s.lat[99]),
				ratioDur(s.lat[50], direct.lat[50]), ratioDur(s.lat[99], direct.lat[99]), added50, added99, cpu,
				fmt.Sprintf("%.1f", s.qps), strconv.FormatInt(s.errors, 10))
		}
	}
	w("\n")
	for _, suffix := range []string{"", newConnSuffix} {
		ex, tr := sums[keyNetnsExplicit+suffix], sums[keyNetnsTransparent+suffix]
		if ex == nil || tr == nil {
			continue
		}
		what := "Keep-alive"
		if suffix != "" {
			what = "New connection per request"
		}
		w("- %s: transparent minus explicit: p50 %s ms, p99 %s ms; CPU per 1,000 requests %s ms (× %s).\n", what,
			plusMs(tr.lat[50]-ex.lat[50]), plusMs(tr.lat[99]-ex.lat[99]),
			plusMs(tr.cpuPer1k-ex.cpuPer1k), ratioDur(tr.cpuPer1k, ex.cpuPer1k))
	}
	w("\n")
}

package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The report's sections for -sweep, the maximum rate of every target,
// memory (idle, peak, idle connections) and the fast-fail runs.

func cpuMs(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

func rateString(q float64) string { return strconv.FormatFloat(q, 'f', -1, 64) }

// sweepTargets are the targets that run at every rate.
func (r *report) sweepTargets() []*target {
	var ts []*target
	for _, t := range r.targets {
		if t.sweeps() {
			ts = append(ts, t)
		}
	}
	return ts
}

// sweepSection is a table per -sweep rate.
func (r *report) sweepSection(b *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	row := func(cells ...string) { w("| %s |\n", strings.Join(cells, " | ")) }
	w("## Rate sweep\n\n")
	w("Every loopback scenario at each fixed rate (`-sweep`), %d connections, %v per run, the scenarios rotating within each round; "+
		"medians over %d rounds. Milliseconds; added is the median minus direct's at the same rate; CPU is the proxy's per 1,000 requests; "+
		"peak RSS the highest of the rounds' VmHWM at the rate (reset before each run).\n\n",
		r.o.conns, r.o.duration, r.o.runs)
	for _, q := range r.o.rates() {
		w("### %s requests/s\n\n", rateString(q))
		row("scenario", "p50", "p90", "p99", "p99.9", "added p50", "added p99", "CPU ms / 1,000 requests", "context switches / request", "peak RSS MB", "achieved qps", "errors")
		row("---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:")
		var direct *summary
		for _, t := range r.sweepTargets() {
			s := r.summarizeAt(t, q)
			if t.key == keyDirect {
				direct = s
			}
			a50, a99, cpu, sw, rss := "–", "–", "–", "–", "–"
			if direct != nil && t.key != keyDirect {
				a50, a99 = plusMs(s.lat[50]-direct.lat[50]), plusMs(s.lat[99]-direct.lat[99])
			}
			if s.hasCPU {
				cpu, sw = cpuMs(s.cpuPer1k), fmt.Sprintf("%.2f", s.switches)
			}
			if s.peakRSS > 0 {
				rss = mb(s.peakRSS)
			}
			row(t.name, ms(s.lat[50]), ms(s.lat[90]), ms(s.lat[99]), ms(s.lat[99.9]), a50, a99, cpu, sw, rss,
				fmt.Sprintf("%.1f", s.qps), strconv.FormatInt(s.errors, 10))
		}
		w("\n%s", r.noiseLine(q))
	}
}

// maxQPS is the median achieved rate of t's maximum-rate runs.
func (r *report) maxQPS(key string) float64 {
	var q []float64
	for _, s := range r.maxSamples[key] {
		q = append(q, s.qps)
	}
	return median(q)
}

// maxSection is every target's maximum rate.
func (r *report) maxSection(b *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	row := func(cells ...string) { w("| %s |\n", strings.Join(cells, " | ")) }
	var ts []*target
	for _, t := range r.targets {
		if len(r.maxSamples[t.key]) > 0 {
			ts = append(ts, t)
		}
	}
	if len(ts) < 2 {
		return
	}
	o := r.o
	direct := r.maxQPS(keyDirect)
	w("## Maximum rate\n\n")
	w("No fixed rate (`-qps 0`), %d connections, %v per run, median over %d rounds, the targets rotating; "+
		"load generator, upstream and proxy share the machine's cores. Latency here is closed-loop (each connection sends its next request when the last is answered). "+
		"Machine busy: the share of every core's time not idle during the run (/proc/stat, every process's, the harness's own included); "+
		"machine CPU: that busy time per 1,000 requests, of which the proxy's, the upstream's (fortio's echo server) and the load generator's (fortio's own user and system time) are columns of their own. "+
		"The rate is about the busy cores divided by the machine's CPU per request: a proxy moves it with its own CPU and with what it makes the upstream and the load generator spend.\n\n",
		o.conns, o.maxDuration, len(r.maxSamples[keyDirect]))
	row("scenario", "requests/s", "× direct", "p50 ms", "p99 ms", "CPU ms / 1,000 requests", "peak RSS MB after",
		"machine busy", "machine CPU ms / 1,000", "upstream CPU ms / 1,000", "load generator CPU ms / 1,000")
	row("---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:")
	for _, t := range ts {
		s := r.summarizeAt(t, 0)
		q := r.maxQPS(t.key)
		cpu, rss := "–", "–"
		if s.hasCPU {
			cpu = cpuMs(s.cpuPer1k)
		}
		if u, ok := r.usageAfterMax[t.key]; ok {
			rss = mb(u.PeakRSS)
		}
		busy, machine, up, load := "–", "–", "–", "–"
		if s.hasMachine {
			busy = fmt.Sprintf("%.0f %%", 100*s.busyShare)
			machine, up, load = cpuMs(s.machinePer1k), cpuMs(s.upstreamPer1k), cpuMs(s.loadPer1k)
		}
		row(t.name, fmt.Sprintf("%.0f", q), ratio(q, direct), ms(s.lat[50]), ms(s.lat[99]), cpu, rss, busy, machine, up, load)
	}
	if side := r.maxQPS(keyMinimesh); side > 0 {
		w("\n**Maximum rate ratio (through sidecar / direct): %s**", ratio(side, direct))
		for _, k := range []string{keyHAProxy, keyHAProxy1, keyNginx, keyCaddy} {
			if p := r.maxQPS(k); p > 0 {
				w("; sidecar / %s: %s", r.target(k).name, ratio(side, p))
			}
		}
		w(".\n")
	}
	w("\n")
}

// memorySection is each proxy's RSS idle, at its peak, and with idle
// keep-alive connections.
func (r *report) memorySection(b *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	row := func(cells ...string) { w("| %s |\n", strings.Join(cells, " | ")) }
	w("## Memory\n\n")
	w("MB = 10⁶ bytes, summed over the proxy's processes. Idle: VmRSS after start and one request, before any load. " +
		"Peak: VmHWM after the fixed-rate rounds, and after the maximum-rate runs (the highest of the runs', each reset before it, and VmHWM since the last).")
	var ns []int
	if len(r.idle) > 0 {
		ns = append(ns, r.o.idleConns...)
		w(" Idle connections: a fresh instance of each proxy, its VmRSS %v after start, then after N keep-alive connections "+
			"(opened 32 at a time, one `GET /` each, then left idle for %v; the counts add up: the larger count keeps the smaller's connections); "+
			"bytes per connection = (RSS with N − RSS before) / N.", idleSettle, idleSettle)
	}
	w("\n\n")
	head := []string{"proxy", "idle RSS MB", "peak RSS MB, fixed rates", "peak RSS MB, after maximum rate"}
	align := []string{"---", "---:", "---:", "---:"}
	for _, n := range ns {
		head = append(head, fmt.Sprintf("RSS MB, %d idle connections", n), fmt.Sprintf("bytes / idle connection at %d", n))
		align = append(align, "---:", "---:")
	}
	row(head...)
	row(align...)
	idleBy := map[string]idleResult{}
	for _, ir := range r.idle {
		idleBy[ir.name] = ir
	}
	for _, t := range r.targets {
		if t.proc == nil || t.netns != "" || t.viaProxy != nil {
			continue
		}
		cells := []string{t.name, mb(r.usageIdle[t.key].RSS), mb(r.usage[t.key].PeakRSS), "–"}
		if u, ok := r.usageAfterMax[t.key]; ok {
			cells[3] = mb(u.PeakRSS)
		}
		ir, ok := idleBy[t.name]
		for _, n := range ns {
			if !ok {
				cells = append(cells, "–", "–")
				continue
			}
			cells = append(cells, mb(ir.rss[n]), fmt.Sprintf("%.0f", ir.perConn(n)))
		}
		row(cells...)
	}
	w("\n")
	for _, ir := range r.idle {
		if ir.config != "" {
			w("- %s's idle-connection instance: %s; its RSS before the connections: %s MB.\n", ir.name, ir.config, mb(ir.baseRSS))
		}
	}
	if r.idleNote != "" {
		w("- Idle connections: %s.\n", r.idleNote)
	}
	w("\n")
}

// medians are the median percentiles of ss.
func medians(ss []sample) map[float64]time.Duration {
	m := map[float64]time.Duration{}
	for _, p := range percentiles {
		var ds []time.Duration
		for _, s := range ss {
			ds = append(ds, s.lat[p])
		}
		m[p] = medianDur(ds)
	}
	return m
}

// fastFailSection compares the sidecar's answers from an open breaker
// with direct's answers from the upstream, with the same client at the
// same rate.
func (r *report) fastFailSection(b *strings.Builder) {
	if len(r.fastFail) == 0 || len(r.fastFailDirect) == 0 {
		return
	}
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	row := func(cells ...string) { w("| %s |\n", strings.Join(cells, " | ")) }
	o := r.o
	ff, d := medians(r.fastFail), medians(r.fastFailDirect)
	var cpu []time.Duration
	var socks []float64
	for _, s := range r.fastFail {
		cpu = append(cpu, s.cpuPer1k())
		socks = append(socks, float64(s.sockets))
	}
	w("## Fast fail from an open breaker\n\n")
	w("fortio's standard client (`-stdclient`: its fast client closes the connection after any answer but 2xx) at %s requests/s, %d connections, "+
		"%v per run, %d rounds: through the sidecar to `%s`, a destination where nothing listens (`--resolve`) whose policy opens the breaker "+
		"at the first failure for an hour, so that after one 502 (connect failure) every answer is the sidecar's own 503 `circuit-open`, "+
		"without dialling; and, back to back with it, the order alternating, straight to the upstream with the same client (200). Milliseconds, medians over the rounds.\n\n",
		rateString(o.qps), o.conns, o.fastFailT, len(r.fastFail), deadHostPort)
	row("", "p50", "p90", "p99", "p99.9")
	row("---", "---:", "---:", "---:", "---:")
	row("open breaker (503 from the sidecar)", ms(ff[50]), ms(ff[90]), ms(ff[99]), ms(ff[99.9]))
	row("direct (200 from the upstream)", ms(d[50]), ms(d[90]), ms(d[99]), ms(d[99.9]))
	row("added over direct", plusMs(ff[50]-d[50]), plusMs(ff[90]-d[90]), plusMs(ff[99]-d[99]), plusMs(ff[99.9]-d[99.9]))
	w("\nThe sidecar spent %s ms CPU per 1,000 fast-failed requests; fortio opened %.0f connections per run (median; %d when every connection was kept).\n\n",
		cpuMs(medianDur(cpu)), median(socks), o.conns)
}

// peerTargets are the targets that compare the sidecar with the peers.
func (r *report) peerTargets(row func(...string), sums map[string]*summary) {
	side, direct := sums[keyMinimesh], sums[keyDirect]
	rate := rateString(r.o.qps)
	if ng := sums[keyNginx]; ng != nil && ng.hasCPU {
		row(fmt.Sprintf("CPU per request at %s requests/s ≤ nginx's", rate),
			fmt.Sprintf("%s against %s ms / 1,000%s", cpuMs(side.cpuPer1k), cpuMs(ng.cpuPer1k), r.cpuRounds(side.t, ng.t)),
			yesNo(side.cpuPer1k <= ng.cpuPer1k))
	}
	if nl := sums[keyNginxLog]; nl != nil && nl.hasCPU {
		row(fmt.Sprintf("CPU per request at %s requests/s ≤ nginx's with an access log and request IDs (the same work; not the issue's target)", rate),
			fmt.Sprintf("%s against %s ms / 1,000%s", cpuMs(side.cpuPer1k), cpuMs(nl.cpuPer1k), r.cpuRounds(side.t, nl.t)),
			yesNo(side.cpuPer1k <= nl.cpuPer1k))
	}
	if hp := sums[keyHAProxy]; hp != nil {
		sa, ha := side.lat[99]-direct.lat[99], hp.lat[99]-direct.lat[99]
		// In one round direct's p99 is the same for both: the added
		// p99s compare as the p99s do.
		d := byRound(r.atRate(side.t, r.rate(side.t)), r.atRate(hp.t, r.rate(hp.t)), func(a, b sample) (float64, bool) {
			return float64(a.lat[99]-b.lat[99]) / float64(time.Millisecond), true
		})
		row(fmt.Sprintf("added p99 at %s requests/s ≤ HAProxy's", rate),
			fmt.Sprintf("%s against %s ms%s", plusMs(sa), plusMs(ha), roundsNote(d, "%+.3f ms", func(x float64) bool { return x <= 0 })),
			yesNo(sa <= ha))
	}
	if u, ok := r.usageIdle[keyMinimesh]; ok {
		row("idle RSS < 15 MB", mb(u.RSS)+" MB", yesNo(float64(u.RSS) < targetRSS))
	}
	if u, ok := r.usageAfterMax[keyMinimesh]; ok && len(r.maxSamples[keyMinimesh]) > 0 {
		row("peak RSS < 15 MB after the maximum rate", mb(u.PeakRSS)+" MB", yesNo(float64(u.PeakRSS) < targetRSS))
	}
	// Every sidecar's: the main one runs as injected with one core, and a
	// variant with as many Ps as the peers' workers (make bench's
	// "two-cores") is the like-for-like comparison of the maximum rate.
	for _, t := range r.targets {
		if !strings.HasPrefix(t.key, keyMinimesh) {
			continue
		}
		for _, hp := range []struct{ key, what string }{
			{keyHAProxy, "HAProxy's (%s)"},
			{keyHAProxy1, "HAProxy's with one thread, the sidecar's budget (%s; not the issue's target)"},
		} {
			if s, h := r.maxQPS(t.key), r.maxQPS(hp.key); s > 0 && h > 0 {
				q := byRound(r.maxSamples[t.key], r.maxSamples[hp.key], func(a, b sample) (float64, bool) { return a.qps / b.qps, b.qps > 0 })
				row("maximum rate ≥ 0.9 × "+fmt.Sprintf(hp.what, t.name),
					fmt.Sprintf("%.0f against %.0f requests/s (%s ×)%s", s, h, ratio(s, h), roundsNote(q, "%.2f ×", func(x float64) bool { return x >= 0.9 })),
					yesNo(s >= 0.9*h))
			}
		}
	}
	if len(r.fastFail) > 0 && len(r.fastFailDirect) > 0 {
		ff, d := medians(r.fastFail), medians(r.fastFailDirect)
		a := ff[50] - d[50]
		row("fast fail from an open breaker < 50 µs added over direct (p50)",
			fmt.Sprintf("%s ms (p99 %s ms)", plusMs(a), plusMs(ff[99]-d[99])), yesNo(a < 50*time.Microsecond))
	}
}

// byRound is f of a's and b's runs of the same round, round by round,
// for the rounds where f can compare them (its ok). The rounds rotate
// the targets, so that a round's runs share minutes of the machine: a
// pair cancels much of what moves from one round to the next, which
// the medians of each target's rounds do not.
func byRound(a, b []sample, f func(a, b sample) (v float64, ok bool)) []float64 {
	var xs []float64
	for _, x := range a {
		for _, y := range b {
			if x.run == y.run {
				if v, ok := f(x, y); ok {
					xs = append(xs, v)
				}
				break
			}
		}
	}
	return xs
}

// cpuRounds is the round-by-round note on a's CPU per request against b's.
func (r *report) cpuRounds(a, b *target) string {
	xs := byRound(r.atRate(a, r.rate(a)), r.atRate(b, r.rate(b)), func(x, y sample) (float64, bool) {
		return float64(x.cpuPer1k()) / float64(y.cpuPer1k()), x.hasCPU && y.hasCPU && y.cpuPer1k() > 0
	})
	return roundsNote(xs, "%.2f ×", func(x float64) bool { return x <= 1 })
}

// roundsNote says how a comparison went round by round: its range and
// median (each formatted by format), and in how many rounds met holds.
// Empty with fewer than two rounds, where the medians say it all.
func roundsNote(xs []float64, format string, met func(float64) bool) string {
	if len(xs) < 2 {
		return ""
	}
	n := 0
	for _, x := range xs {
		if met(x) {
			n++
		}
	}
	return fmt.Sprintf("; round by round "+format+" to "+format+", median "+format+", met in %d of %d",
		slices.Min(xs), slices.Max(xs), median(xs), n, len(xs))
}

// spread is the lowest and highest percentile p of key's runs at rate q.
func (r *report) spread(key string, q float64, p float64) (lo, hi time.Duration, n int) {
	t := r.target(key)
	for _, s := range r.samples[key] {
		if s.rate != q && !(s.rate == 0 && t != nil && q == r.rate(t)) {
			continue
		}
		v := s.lat[p]
		if n == 0 || v < lo {
			lo = v
		}
		if n == 0 || v > hi {
			hi = v
		}
		n++
	}
	return lo, hi, n
}

// noiseLine says how far direct's own percentiles moved between rounds at
// rate q: the noise that any added latency must be read against.
func (r *report) noiseLine(q float64) string {
	lo50, hi50, n := r.spread(keyDirect, q, 50)
	if n < 2 {
		return ""
	}
	lo99, hi99, _ := r.spread(keyDirect, q, 99)
	return fmt.Sprintf("Noise: over the %d rounds at %s requests/s, direct's own p50 ranged %s–%s ms and its p99 %s–%s ms; "+
		"an added latency smaller than that spread is not a difference.\n\n",
		n, rateString(q), ms(lo50), ms(hi50), ms(lo99), ms(hi99))
}

// noiseAndCold is the direct scenario's spread at -qps, and each target's
// first run after start (the warm-up) next to its warm medians.
func (r *report) noiseAndCold(b *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	row := func(cells ...string) { w("| %s |\n", strings.Join(cells, " | ")) }
	if l := r.noiseLine(r.o.qps); l != "" {
		w("## Noise\n\nO%s", strings.TrimPrefix(l, "Noise: o"))
	}
	if len(r.cold) == 0 {
		return
	}
	w("## Cold and warm\n\n")
	w("Cold: each target's first load after start (the %v warm-up run at its fixed rate, before the first round: new connections, "+
		"empty pools, a Go heap still growing; the HTTP_PROXY rows share their process with the row above, warm by then); "+
		"warm: the medians of the measured rounds. Milliseconds; CPU per 1,000 requests.\n\n", r.o.warmup)
	row("scenario", "cold p50", "cold p99", "cold p99.9", "cold CPU", "warm p50", "warm p99", "warm p99.9", "warm CPU", "cold errors")
	row("---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:")
	for _, t := range r.targets {
		c, ok := r.cold[t.key]
		if !ok {
			continue
		}
		s := r.summarize(t)
		cc, wc := "–", "–"
		if c.hasCPU {
			cc = cpuMs(c.cpuPer1k())
		}
		if s.hasCPU {
			wc = cpuMs(s.cpuPer1k)
		}
		row(t.name, ms(c.lat[50]), ms(c.lat[99]), ms(c.lat[99.9]), cc, ms(s.lat[50]), ms(s.lat[99]), ms(s.lat[99.9]), wc,
			strconv.FormatInt(c.errors, 10))
	}
	w("\n")
}

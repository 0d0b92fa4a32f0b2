package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
)

func TestParseFlagsSweep(t *testing.T) {
	o, err := parseFlags([]string{"-sweep", "5000,100", "-sweep", "100,5000,1000", "-idle-conns", "10,5", "-http-proxy"})
	if err != nil {
		t.Fatal(err)
	}
	if got := (&o.sweep).String(); got != "100,5000,1000" {
		t.Errorf("a second -sweep does not replace the first: %s", got)
	}
	if got := o.rates(); len(got) != 3 || got[0] != 100 || got[1] != 1000 || got[2] != 5000 {
		t.Errorf("rates = %v, want 100 1000 5000 (-qps once, ascending)", got)
	}
	if got := (&o.idleConns).String(); got != "10,5" || !o.httpProxy || o.fastFailT != 5*time.Second {
		t.Errorf("idle-conns %s, http-proxy %v, fastfail-t %v", got, o.httpProxy, o.fastFailT)
	}
	o, err = parseFlags([]string{"-idle-conns", ""})
	if err != nil || len(o.idleConns) != 0 {
		t.Errorf("-idle-conns '': %v, %v", o.idleConns, err)
	}
	if o, _ := parseFlags(nil); len(o.idleConns) != 2 || !strings.Contains(strings.Join(o.scenarioKeys(), ","), keyCaddy) {
		t.Errorf("defaults: idle-conns %v, scenarios %v", o.idleConns, o.scenarioKeys())
	}
	for _, bad := range [][]string{{"-sweep", "100,x"}, {"-sweep", "0"}, {"-idle-conns", "0"}, {"-fastfail-t", "-1s"}, {"-h2", "-sweep", "100"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q): no error", bad)
		}
	}
}

func TestHTTPProxyLoadArgs(t *testing.T) {
	p := &proxyPath{addr: "127.0.0.1:1", url: "http://" + proxyHostPort("127.0.0.1:2") + "/", proxy: "http://127.0.0.1:1"}
	l := p.spec(1000, 16, time.Second, 0.00001)
	got := strings.Join(l.args("o"), " ")
	for _, want := range []string{"-stdclient", "-resolve 127.0.0.1", " http://bench-upstream:2/"} {
		if !strings.Contains(got, want) {
			t.Errorf("HTTP_PROXY fortio args %q lack %q", got, want)
		}
	}
	if strings.Contains(got, "Host:") {
		t.Errorf("HTTP_PROXY fortio args %q set a Host header: the URL names the host", got)
	}
}

// TestCaddyConfig checks the generated Caddy config with Caddy itself,
// where scripts/tools.sh built it.
func TestCaddyConfig(t *testing.T) {
	caddy := proc.NeedTool(t, "caddy")
	dir := t.TempDir()
	conf := filepath.Join(dir, "caddy.json")
	if err := os.WriteFile(conf, []byte(caddyConfig("127.0.0.1:1", "127.0.0.1:2")), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := []string{"validate", "--config", conf}
	if out, err := runCmd(context.Background(), caddy, cmd...); err != nil {
		t.Errorf("caddy validate: %v\n%s", err, out)
	}
}

// sweepReport is a report of a -sweep run with every section filled.
func sweepReport(t *testing.T) *report {
	o, err := parseFlags([]string{"-runs", "1", "-sweep", "100,1000", "-idle-conns", "1000"})
	if err != nil {
		t.Fatal(err)
	}
	rep := newReport(o)
	rep.targets = []*target{{key: keyDirect, name: "direct"}, {key: keyMinimesh, name: "minimesh-proxy", proc: &proc.Proc{}},
		{key: keyHAProxy, name: "haproxy", proc: &proc.Proc{}}}
	lat := func(p50, p99 time.Duration) map[float64]time.Duration {
		return map[float64]time.Duration{50: p50, 90: p50, 99: p99, 99.9: p99}
	}
	us := time.Microsecond
	for i, k := range []string{keyDirect, keyMinimesh, keyHAProxy} {
		d := time.Duration(i) * 100 * us
		for _, q := range []float64{100, 1000} {
			rep.add(k, sample{run: 1, rate: q, qps: q, requests: int64(q * 10), lat: lat(100*us+d, 300*us+d),
				cpu: time.Duration(q) * time.Millisecond / 10, switches: int64(q * 25), hasCPU: k != keyDirect})
			if k != keyDirect {
				ss := rep.samples[k]
				ss[len(ss)-1].peakRSS = 13e6 + int64(q)*1000 // 13.1 MB at 100/s, 14.0 at 1,000
			}
		}
		rep.addMax(k, sample{run: 1, qps: 20000 / float64(i+1), requests: 100000, lat: lat(time.Millisecond, 3*time.Millisecond),
			cpu: time.Second, hasCPU: k != keyDirect})
		if k != keyDirect {
			rep.usageIdle[k] = proc.Usage{RSS: 12e6, Procs: 1}
			rep.usage[k] = proc.Usage{PeakRSS: 14e6, Procs: 1}
			rep.usageAfterMax[k] = proc.Usage{PeakRSS: 16e6, Procs: 1}
		}
	}
	rep.idle = []idleResult{{name: "minimesh-proxy", baseRSS: 12e6, rss: map[int]int64{1000: 20e6}}}
	rep.fastFail = []sample{{run: 1, lat: lat(130*us, 400*us), requests: 1000, cpu: 100 * time.Millisecond, sockets: 16,
		codes: map[string]int64{"503": 1000}}}
	rep.fastFailDirect = []sample{{run: 1, lat: lat(100*us, 300*us), requests: 1000}}
	return rep
}

func TestMarkdownSweep(t *testing.T) {
	rep := sweepReport(t)
	us := time.Microsecond
	rep.add(keyDirect, sample{run: 2, rate: 1000, qps: 1000, requests: 10000,
		lat: map[float64]time.Duration{50: 140 * us, 90: 140 * us, 99: 900 * us, 99.9: 900 * us}})
	rep.cold[keyMinimesh] = sample{run: 0, rate: 1000, qps: 1000, requests: 2000,
		lat: map[float64]time.Duration{50: 500 * us, 90: 500 * us, 99: 2 * time.Millisecond, 99.9: 3 * time.Millisecond},
		cpu: 400 * time.Millisecond, hasCPU: true}
	md := rep.markdown()
	for _, want := range []string{
		"## Rate sweep",
		"### 100 requests/s",
		"| minimesh-proxy | 0.200 | 0.200 | 0.400 | 0.400 | +0.100 | +0.100 | 10.0 | 2.50 | 13.1 | 100.0 | 0 |",
		"| direct | 0.100 | 0.100 | 0.300 | 0.300 | – | – | – | – | – | 100.0 | 0 |",
		"| haproxy | 6667 | 0.33 | 1.000 | 3.000 | 10.0 | 16.0 |",
		"sidecar / haproxy: 1.50",
		"| minimesh-proxy | 12.0 | 14.0 | 16.0 | 20.0 | 8000 |",
		"| added over direct | +0.030 | +0.030 | +0.100 | +0.100 |",
		"| maximum rate ≥ 0.9 × HAProxy's (minimesh-proxy) | 10000 against 6667 requests/s (1.50 ×) | yes |",
		"| added p99 at 1000 requests/s ≤ HAProxy's | -0.200 against -0.100 ms | yes |",
		"| fast fail from an open breaker < 50 µs added over direct (p50) | +0.030 ms (p99 +0.100 ms) | yes |",
		"| 1 | minimesh-proxy | 100 | 0.200 | 0.200 | 0.400 | 0.400 | 100.0 | 0 | 10.0 | 13.1 |",
		"Noise: over the 2 rounds at 1000 requests/s, direct's own p50 ranged 0.100–0.140 ms and its p99 0.300–0.900 ms; an added",
		"## Noise\n\nOver the 2 rounds at 1000 requests/s,",
		"| minimesh-proxy | 0.500 | 2.000 | 3.000 | 200.0 | 0.200 | 0.400 | 0.400 | 10.0 | 0 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if f := rep.failures(); len(f) != 0 {
		t.Errorf("failures = %q", f)
	}
	rep.fastFail[0].errors = 3
	if f := rep.failures(); len(f) != 1 || !strings.Contains(f[0], "not answered 503") {
		t.Errorf("failures with 200s from the open breaker = %q", f)
	}
}

func TestPlot(t *testing.T) {
	dir := t.TempDir()
	if err := sweepReport(t).plot(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{latencyPNG, costPNG} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte("\x89PNG\r\n")) || len(b) < 10000 {
			t.Errorf("%s: %d bytes, not a PNG of a plot", name, len(b))
		}
	}
}

// TestByRound: the targets that compare the sidecar with a peer say how
// they went round by round, pairing each round's runs and leaving out a
// round one of them lacks.
func TestByRound(t *testing.T) {
	o, err := parseFlags([]string{"-scenarios", "direct,minimesh,nginx,haproxy", "-runs", "4"})
	if err != nil {
		t.Fatal(err)
	}
	rep := newReport(o)
	rep.targets = []*target{{key: keyDirect, name: "direct"}, {key: keyMinimesh, name: "minimesh-proxy"},
		{key: keyNginx, name: "nginx"}, {key: keyHAProxy, name: "haproxy"}}
	ms := time.Millisecond
	p99 := func(d time.Duration) map[float64]time.Duration { return map[float64]time.Duration{50: d / 2, 99: d} }
	side := []time.Duration{90, 130, 110, 120}   // CPU ms per 10,000 requests
	nginx := []time.Duration{100, 100, 100, 100} // ratios 0.9, 1.3, 1.1 (round 4 has no nginx run)
	for i := range 4 {
		run := i + 1
		rep.add(keyDirect, sample{run: run, qps: 1000, requests: 10000, lat: p99(ms)})
		rep.add(keyMinimesh, sample{run: run, qps: 1000, requests: 10000, lat: p99(ms + time.Duration(run)*ms/10),
			cpu: side[i] * 10 * ms, hasCPU: true})
		if run < 4 {
			rep.add(keyNginx, sample{run: run, qps: 1000, requests: 10000, lat: p99(ms), cpu: nginx[i] * 10 * ms, hasCPU: true})
		}
		rep.add(keyHAProxy, sample{run: run, qps: 1000, requests: 10000, lat: p99(ms + 2*ms/10)})
		rep.addMax(keyMinimesh, sample{run: run, qps: float64(800 + 100*run), requests: 10000})
		rep.addMax(keyHAProxy, sample{run: run, qps: 1000, requests: 10000})
	}
	md := rep.markdown()
	for _, want := range []string{
		// Medians 115 against 100, but round by round.
		"| CPU per request at 1000 requests/s ≤ nginx's | 115.0 against 100.0 ms / 1,000; round by round 0.90 × to 1.30 ×, median 1.10 ×, met in 1 of 3 | **no** |",
		// The sidecar's p99 1.1–1.4 ms, HAProxy's 1.2 ms in every round.
		"against +0.200 ms; round by round -0.100 ms to +0.200 ms, median +0.050 ms, met in 2 of 4 |",
		"| maximum rate ≥ 0.9 × HAProxy's (minimesh-proxy) | 1050 against 1000 requests/s (1.05 ×); round by round 0.90 × to 1.20 ×, median 1.05 ×, met in 4 of 4 | yes |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if got := roundsNote([]float64{1.2}, "%.2f", func(float64) bool { return true }); got != "" {
		t.Errorf("one round: %q, want nothing", got)
	}
}

// TestRunsPeak: the peak of a process is the highest of its runs', over
// every target that shares it (the HTTP_PROXY path's rows are the same
// sidecar) and the fast-fail runs of the sidecar; another process's runs
// are not its.
func TestRunsPeak(t *testing.T) {
	o, err := parseFlags([]string{"-runs", "1"})
	if err != nil {
		t.Fatal(err)
	}
	rep := newReport(o)
	side, other := &proc.Proc{}, &proc.Proc{}
	rep.targets = []*target{{key: keyMinimesh, name: "minimesh-proxy", proc: side},
		{key: keyMinimesh + proxySuffix, name: "minimesh-proxy (HTTP_PROXY)", proc: side},
		{key: keyHAProxy, name: "haproxy", proc: other}}
	rep.add(keyMinimesh, sample{peakRSS: 12e6})
	rep.add(keyMinimesh+proxySuffix, sample{peakRSS: 13e6})
	rep.addMax(keyHAProxy, sample{peakRSS: 30e6})
	rep.cold[keyHAProxy] = sample{peakRSS: 9e6}
	if got := rep.runsPeak(rep.targets[0]); got != 13e6 {
		t.Errorf("the sidecar's peak = %d, want the HTTP_PROXY run's 13e6", got)
	}
	rep.fastFail = []sample{{peakRSS: 14e6}}
	if got := rep.runsPeak(rep.targets[1]); got != 14e6 {
		t.Errorf("with the fast-fail runs, the sidecar's peak = %d, want 14e6", got)
	}
	if got := rep.runsPeak(rep.targets[2]); got != 30e6 {
		t.Errorf("HAProxy's peak = %d, want its maximum-rate run's 30e6", got)
	}
}

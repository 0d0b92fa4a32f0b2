package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
)

// percentiles that fortio computes and the report shows.
var percentiles = []float64{50, 90, 99, 99.9}

// fortioResult is the part of `fortio load -json` output that we read.
type fortioResult struct {
	RequestedQPS      json.RawMessage // a number, or "max"
	ActualQPS         float64
	ActualDuration    int64 // ns
	NumThreads        int
	DurationHistogram struct {
		Count       int64
		Min, Max    float64 // seconds
		Avg         float64
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
	RetCodes map[string]int64
	cpu      time.Duration // fortio's user and system time (its process state), not from the JSON
	Sockets  []int64       // connections opened, per fortio connection
}

// sample is one load run against one target.
type sample struct {
	target   string
	run      int
	rate     float64          // requested requests/s; 0: as fast as it goes
	qps      float64          // achieved
	requests int64            // answered calls, all codes
	errors   int64            // calls not answered 200 (socket errors count as -1)
	codes    map[string]int64 // every code fortio saw
	lat      map[float64]time.Duration
	sockets  int64         // connections fortio opened
	cpu      time.Duration // proxy CPU during the run; 0 for direct
	user     time.Duration // the user-mode part of cpu
	switches int64         // the proxy's context switches during the run
	hasCPU   bool
	// peakRSS is the proxy's peak RSS during the run (VmHWM, reset just
	// before it); 0 when the reset failed.
	peakRSS int64
	// At the maximum rate: the load generator's CPU (fortio's own, from
	// its exit status), the upstream's, and the machine's (/proc/stat).
	loadCPU     time.Duration
	upstreamCPU time.Duration
	machine     proc.Machine
}

// per1k is d per 1,000 of the run's requests.
func (s sample) per1k(d time.Duration) time.Duration {
	if s.requests == 0 {
		return 0
	}
	return time.Duration(float64(d) * 1000 / float64(s.requests))
}

// cpuPer1k is the proxy's CPU time per 1,000 requests.
func (s sample) cpuPer1k() time.Duration { return s.per1k(s.cpu) }

// switchesPerReq is the proxy's context switches per request.
func (s sample) switchesPerReq() float64 {
	if s.requests == 0 {
		return 0
	}
	return float64(s.switches) / float64(s.requests)
}

// userPer1k is the user-mode part of cpuPer1k.
func (s sample) userPer1k() time.Duration { return s.per1k(s.user) }

// loadSpec is one fortio load run.
type loadSpec struct {
	qps      float64 // 0: as fast as it goes
	conns    int
	duration time.Duration
	res      float64 // histogram resolution, seconds
	addr     string  // where to connect
	host     string  // Host header: the upstream
	netns    string  // network namespace to run fortio in (ip netns exec); "": the harness's
	newConn  bool    // a new connection for every request (-keepalive=false)

	// -http-proxy: fortio's standard client (-stdclient), which takes
	// HTTP_PROXY from its environment as Go's net/http does.
	stdClient bool
	url       string // the URL to load; "": http://addr/
	proxy     string // HTTP_PROXY for fortio; "": none
	resolve   string // fortio -resolve: the IP of the URL's host name

	// payload: a POST of this many bytes (fortio -payload-size); 0: GET.
	payload int

	// The fast-fail runs: every answer is a 503, the first one too,
	// which fortio would otherwise take for a broken target.
	allowInitialErrors bool
}

// args is fortio's command line for the run, writing JSON to jsonPath.
func (l loadSpec) args(jsonPath string) []string {
	ps := make([]string, len(percentiles))
	for i, p := range percentiles {
		ps[i] = strconv.FormatFloat(p, 'f', -1, 64)
	}
	a := []string{"load",
		"-qps", strconv.FormatFloat(l.qps, 'f', -1, 64),
		"-c", strconv.Itoa(l.conns),
		"-t", l.duration.String(),
		"-r", strconv.FormatFloat(l.res, 'f', -1, 64),
		"-p", strings.Join(ps, ","),
		"-json", jsonPath,
		"-quiet",
	}
	if l.host != "" {
		a = append(a, "-H", "Host: "+l.host)
	}
	if l.stdClient {
		a = append(a, "-stdclient")
	}
	if l.allowInitialErrors {
		a = append(a, "-allow-initial-errors")
	}
	if l.resolve != "" {
		a = append(a, "-resolve", l.resolve)
	}
	if l.payload > 0 {
		a = append(a, "-payload-size", strconv.Itoa(l.payload))
	}
	if l.newConn {
		// Connect, send, read, close: every request pays for a new
		// connection, and its latency includes the connect.
		a = append(a, "-keepalive=false")
	}
	if l.qps > 0 {
		// Spread the connections' requests evenly over time instead of
		// sending them in bursts of -c.
		a = append(a, "-uniform")
	}
	if l.url != "" {
		return append(a, l.url)
	}
	return append(a, "http://"+l.addr+"/")
}

// runLoad runs fortio once and parses its JSON result.
func runLoad(ctx context.Context, fortio, dir string, l loadSpec) (*fortioResult, error) {
	f, err := os.CreateTemp(dir, "fortio-*.json")
	if err != nil {
		return nil, err
	}
	f.Close()
	defer os.Remove(f.Name())
	ctx, cancel := context.WithTimeout(ctx, l.duration+time.Minute)
	defer cancel()
	path, args := fortio, l.args(f.Name())
	if l.netns != "" {
		// ip execs fortio in the namespace: the process killed on a
		// timeout or an interrupt is fortio itself.
		ip, err := tools.Find("ip")
		if err != nil {
			return nil, err
		}
		path, args = ip, append([]string{"netns", "exec", l.netns, fortio}, args...)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = cleanEnv()
	if l.proxy != "" {
		cmd.Env = cleanEnv("HTTP_PROXY=" + l.proxy)
	}
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("fortio load against %s: %w", l.addr, context.Cause(ctx))
		}
		return nil, fmt.Errorf("fortio load against %s: %v\n%s", l.addr, err, strings.TrimSpace(string(out)))
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		return nil, err
	}
	r, err := parseFortio(b)
	if err != nil {
		return nil, fmt.Errorf("fortio load against %s: %w\n%s", l.addr, err, strings.TrimSpace(string(out)))
	}
	// ip netns exec execs fortio in its own place: the process is fortio.
	r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return r, nil
}

func parseFortio(b []byte) (*fortioResult, error) {
	var r fortioResult
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("fortio JSON: %w", err)
	}
	if r.DurationHistogram.Count == 0 {
		return nil, fmt.Errorf("fortio made no request")
	}
	return &r, nil
}

// toSample keeps what the report needs from a fortio result.
func toSample(targetName string, run int, r *fortioResult) sample {
	s := sample{target: targetName, run: run, qps: r.ActualQPS,
		requests: r.DurationHistogram.Count, codes: r.RetCodes,
		lat: map[float64]time.Duration{}, loadCPU: r.cpu}
	for _, n := range r.Sockets {
		s.sockets += n
	}
	for code, n := range r.RetCodes {
		if code != "200" {
			s.errors += n
		}
	}
	for _, p := range r.DurationHistogram.Percentiles {
		s.lat[p.Percentile] = time.Duration(p.Value * float64(time.Second))
	}
	return s
}

// codesString lists the non-200 codes of a run: "503×12, -1×3".
func codesString(codes map[string]int64) string {
	var parts []string
	for c, n := range codes {
		if c != "200" {
			parts = append(parts, fmt.Sprintf("%s×%d", c, n))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func medianDur(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}

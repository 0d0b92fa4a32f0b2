package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemo plays the whole demo, compressed to 25 s, against the real
// minimesh-proxy built from this tree, and checks that the story happened.
// It skips only when the sidecar does not build and CI is not "true".
// TestMain turns the test binary into the demo when TestDemo starts it
// as a child with DEMO_TEST_AS_DEMO=1.
func TestMain(m *testing.M) {
	if os.Getenv(demoModeEnv) == "1" {
		os.Exit(demoMode())
	}
	os.Exit(m.Run())
}

func TestDemo(t *testing.T) {
	root := moduleRootForTest(t)
	bin := filepath.Join(t.TempDir(), "minimesh-proxy")
	build := exec.Command("go", "build", "-o", bin, "./proxy/cmd/minimesh-proxy")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("go build ./proxy/cmd/minimesh-proxy: %v\n%s", err, out)
		}
		t.Skipf("the sidecar does not build (set CI=true to make this a failure): %v\n%s", err, out)
	}
	assertStory(t, bin, 25*time.Second)
}

func moduleRootForTest(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("not in a module")
	}
	return filepath.Dir(gomod)
}

// The demo runs in a child process (this test binary in demo mode): the
// tenant's net/http reads HTTP_PROXY once per process, and a process of its
// own also shows the exit status a user would get.
const (
	demoModeEnv     = "DEMO_TEST_AS_DEMO"
	demoReportEnv   = "DEMO_TEST_REPORT"
	demoProxyEnv    = "DEMO_TEST_PROXY_BIN"
	demoDurationEnv = "DEMO_TEST_DURATION"
)

// testReport is the part of the report the test checks, as JSON.
type testReport struct {
	Checks                      []check
	Notes                       []check
	Sent, FastFailed, OK        int
	LeakedFastFails             int
	Hits                        int
	FinalState                  string
	EverOpen                    bool
	Metrics                     map[string]int
	FailuresBeforeFirstFastFail int
	MedianFastFail              time.Duration
}

func demoMode() int {
	d, err := time.ParseDuration(os.Getenv(demoDurationEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	rep, err := run(context.Background(), config{ProxyBin: os.Getenv(demoProxyEnv), Duration: d}, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
	}
	if rep == nil {
		return 1
	}
	tr := testReport{
		Checks: rep.Checks, Notes: rep.Notes, Sent: rep.Sent, FastFailed: rep.FastFailed, OK: rep.OK,
		LeakedFastFails: rep.LeakedFastFails, Hits: rep.totalHits(), FinalState: rep.FinalState,
		EverOpen: rep.EverOpen, Metrics: map[string]int{},
		FailuresBeforeFirstFastFail: rep.FailuresBeforeFirstFastFail, MedianFastFail: rep.MedianFastFail,
	}
	for k, v := range rep.Metrics {
		tr.Metrics[k.From+"->"+k.To] = v
	}
	b, _ := json.Marshal(tr)
	if err := os.WriteFile(os.Getenv(demoReportEnv), b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if !rep.ok() {
		return 1
	}
	return 0
}

// assertStory runs the demo with the given sidecar binary and checks the
// story: the breaker opened, its fast-fails never reached nominatim, it
// closed again, and the sidecar stopped cleanly.
func assertStory(t *testing.T, proxyBin string, d time.Duration) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	reportFile := filepath.Join(t.TempDir(), "report.json")
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(),
		demoModeEnv+"=1", demoReportEnv+"="+reportFile,
		demoProxyEnv+"="+proxyBin, demoDurationEnv+"="+d.String())
	out, runErr := cmd.CombinedOutput()
	t.Logf("demo output:\n%s", out)
	if runErr != nil {
		t.Errorf("demo: %v", runErr)
	}
	b, err := os.ReadFile(reportFile)
	if err != nil {
		t.Fatalf("no report: %v", err)
	}
	var r testReport
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Checks) == 0 {
		t.Fatal("the demo checked nothing")
	}
	// Every check of the story, and the notes on the contract except
	// latency, which depends on how busy the machine is.
	for _, c := range append(r.Checks, r.Notes...) {
		if !c.OK && !strings.Contains(c.Name, "sub-millisecond") {
			t.Errorf("%s: %s", c.Name, c.Detail)
		}
	}
	t.Logf("median fast-fail latency: %s", r.MedianFastFail)
	// The story's core, spelled out.
	if !r.EverOpen {
		t.Error("the breaker never opened")
	}
	if r.FastFailed == 0 || r.LeakedFastFails != 0 {
		t.Errorf("fast-failed %d, of which %d reached nominatim", r.FastFailed, r.LeakedFastFails)
	}
	if r.Hits != r.Sent-r.FastFailed {
		t.Errorf("nominatim hits %d, want sent %d − fast-failed %d", r.Hits, r.Sent, r.FastFailed)
	}
	if r.FinalState != "closed" {
		t.Errorf("final breaker state %q, want closed", r.FinalState)
	}
	if r.Metrics["closed->open"] < 1 || r.Metrics["half-open->closed"] < 1 {
		t.Errorf("minimesh_circuit_breaker_transitions_total: %v, want closed→open and half-open→closed", r.Metrics)
	}
}

func TestStoryScales(t *testing.T) {
	for _, d := range []time.Duration{minDuration, 25 * time.Second, baseDuration, time.Minute} {
		st := newStory(d)
		if d == baseDuration && st.OpenTimeout != 5*time.Second {
			t.Errorf("open timeout at %s = %s, want 5s", d, st.OpenTimeout)
		}
		if got := st.modeAt(0); got != healthy {
			t.Errorf("%s: starts %s", d, got)
		}
		if got := st.modeAt(d - time.Millisecond); got != hiccup {
			t.Errorf("%s: ends %s", d, got)
		}
		// The breaker must have time to open within the 503 phase, to
		// close after the outage (last failing moment + 2 s timeout + open
		// timeout + two probes, with a margin) before the hiccup, and the
		// hiccup must have time to pass before the end.
		at := map[mode]time.Duration{}
		for _, p := range st.Phases {
			at[p.Mode] = p.At // healthy: the recovery
		}
		if at[hanging]-at[overloaded] < 6*interval {
			t.Errorf("%s: 503 phase too short to open the breaker", d)
		}
		closed := at[healthy] + 2*time.Second + st.OpenTimeout + 3*interval
		if closed+time.Second > at[hiccup] {
			t.Errorf("%s: breaker would close at ~%s, too close to the hiccup at %s", d, closed, at[hiccup])
		}
		if at[hiccup]+(hiccupFailures+3)*interval > d {
			t.Errorf("%s: hiccup at %s too close to the end", d, at[hiccup])
		}
	}
}

func TestParseTransitions(t *testing.T) {
	metrics := `# HELP minimesh_circuit_breaker_transitions_total Breaker state changes.
# TYPE minimesh_circuit_breaker_transitions_total counter
minimesh_circuit_breaker_transitions_total{destination="nominatim-service:8000",from="closed",to="open"} 1
minimesh_circuit_breaker_transitions_total{destination="nominatim-service:8000",from="half-open",to="open"} 2
minimesh_circuit_breaker_transitions_total{from="open",to="half-open",destination="nominatim-service:8000"} 3
minimesh_circuit_breaker_transitions_total{destination="other-service:8000",from="closed",to="open"} 7
minimesh_circuit_breaker_transitions_total{destination="nominatim-service:8000",from="half-open",to="closed"} 1 1700000000000
minimesh_circuit_breaker_state{destination="nominatim-service:8000",state="closed"} 1
`
	got := parseTransitions([]byte(metrics))
	want := map[transition]int{
		{"closed", "open"}: 1, {"half-open", "open"}: 2, {"open", "half-open"}: 3, {"half-open", "closed"}: 1,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if l := parseLabels(`a="x\"y",b="z"`); l["a"] != `x"y` || l["b"] != "z" {
		t.Errorf("parseLabels: %q", l)
	}
}

func TestTrackerInfersUnseenHalfOpen(t *testing.T) {
	var sink strings.Builder
	trk := &tracker{scr: newScreen(&sink), start: time.Now(), openTimeout: 5 * time.Second}
	v := func(state string, until time.Time) *breakerView {
		b := &breakerView{State: state}
		if !until.IsZero() {
			b.OpenUntil = until.Format(time.RFC3339Nano)
		}
		return b
	}
	t0 := time.Now()
	trk.observe(v("closed", time.Time{}))
	trk.observe(v("open", t0))
	trk.observe(v("open", t0))                    // same opening
	trk.observe(v("open", t0.Add(5*time.Second))) // a probe failed unseen
	trk.observe(v("closed", time.Time{}))         // probes succeeded unseen
	if got, want := fmtPath(trk.transitions()), "closed → open → half-open → open → half-open → closed"; got != want {
		t.Errorf("path %q, want %q", got, want)
	}
	if !trk.everOpen {
		t.Error("everOpen not set")
	}
}

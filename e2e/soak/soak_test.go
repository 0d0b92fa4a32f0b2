// Package soak runs the built sidecar for a bounded time under mixed
// faults (upstreams that reset mid-response, send headers and hang, send
// slow bodies or refuse connections, in turn; clients with slow uploads
// and clients that give up; policy files rewritten in place and by
// rename; SIGHUP) and then checks that nothing leaked: goroutines, file
// descriptors and RSS come back near their level before the load, every
// request is in minimesh_requests_total with failures as failures, no
// panic was logged, and the sidecar still serves.
package soak

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
)

const (
	workers  = 8
	budget   = 6000             // requests at most
	loadTime = 25 * time.Second // and at most this long
	settle   = 15 * time.Second // for the figures to come back

	// After the load the sidecar may keep more than before: kept-alive
	// connections to upstreams, a larger heap. A leak grows with the
	// requests (thousands here); these bounds do not.
	maxMoreGoroutines = 40
	maxMoreFDs        = 40
	maxMoreRSS        = 48 << 20
)

// policies are the two versions the test switches between.
func policies(version int) string {
	open := []string{"1s", "2s"}[version]
	return fmt.Sprintf(`apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: default}
spec:
  service: "*"
  timeout: 3s
  retries: {attempts: 1, retryOn: [connect-failure], backoff: {base: 5ms, max: 20ms}}
  circuitBreaker: {consecutiveFailures: 5, openTimeout: %[1]s}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: turn}
spec:
  service: svc-turn
  timeout: 600ms
  retries: {attempts: 1, perTryTimeout: 300ms, retryOn: [reset, connect-failure, "503"], backoff: {base: 5ms, max: 20ms}}
  circuitBreaker: {consecutiveFailures: %[2]d, openTimeout: %[1]s, halfOpenRequests: 2}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: hang}
spec:
  service: svc-hang
  timeout: 400ms
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: reset}
spec:
  service: svc-reset
  retries: {attempts: 2, retryOn: [reset], backoff: {base: 5ms, max: 20ms}}
  circuitBreaker: {consecutiveFailures: 5, openTimeout: %[1]s}
`, open, 3+version)
}

const brokenPolicy = "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nspec: {service: svc-ok, timeout: soon}\n"

func TestSoak(t *testing.T) {
	bin := sidecarBinary(t)
	start := time.Now()

	resolve := map[string]string{
		"svc-ok:8000":      serveHTTP(t, okUpstream),
		"svc-slow:8000":    serveHTTP(t, slowUpstream),
		"svc-hang:8000":    serveHTTP(t, hangUpstream),
		"svc-reset:8000":   serveRaw(t, resetMidResponse).ln.Addr().String(),
		"svc-refused:8000": refused.Addr(t),
	}
	turnCtx, stopTurn := context.WithCancel(context.Background())
	turn := startTurn(t, turnCtx, 2*time.Second)
	t.Cleanup(stopTurn) // before startTurn's own cleanup, which waits for it
	resolve["svc-turn:8000"] = turn.addr

	dir := t.TempDir()
	policyFile := filepath.Join(dir, "policies.yaml")
	if err := os.WriteFile(policyFile, []byte(policies(0)), 0o644); err != nil {
		t.Fatal(err)
	}
	sc := startSidecar(t, bin, dir, resolve)

	// Warm up with the same mix, so that the baseline has what the load
	// keeps by design (pools, breakers, buffers).
	warm := newTally()
	clients := make([]*client, workers)
	for i := range clients {
		clients[i] = newClient(sc.outbound, uint64(i+1), warm)
	}
	runLoad(context.Background(), clients, 300)
	closeIdle(clients)
	time.Sleep(2 * time.Second) // past every policy timeout and the upstreams' idle timeout
	base, err := sc.figures()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("baseline after a warm-up of 300 requests: %v", base)

	// The load, with policy rewrites and SIGHUPs under it.
	load := newTally()
	for _, c := range clients {
		c.t = load
	}
	loadCtx, stopLoad := context.WithTimeout(context.Background(), loadTime)
	defer stopLoad()
	chaosDone := make(chan chaosReport, 1)
	go func() { chaosDone <- chaos(loadCtx, stopLoad, sc, policyFile) }()
	loadStart := time.Now()
	runLoad(loadCtx, clients, budget)
	loadDur := time.Since(loadStart)
	stopLoad()
	ch := <-chaosDone
	t.Logf("load: %d requests in %v from %d clients; %d policy writes in place, %d by rename, %d broken, %d SIGHUPs",
		load.started.Load(), loadDur.Round(time.Millisecond), workers, ch.inPlace, ch.renamed, ch.broken, ch.hups)
	if ch.died != "" {
		t.Fatalf("the sidecar died under the soak: %s", ch.died)
	}
	if err := sc.proc.Alive(); err != nil {
		t.Fatal(err)
	}

	// Settle: the clients close their kept connections, the upstreams
	// theirs after a second idle; the figures must come back within
	// bounds.
	closeIdle(clients)
	settleStart := time.Now()
	time.Sleep(3 * time.Second)
	var after figures
	settled := false
	for !settled && time.Since(settleStart) < settle {
		if after, err = sc.figures(); err != nil {
			t.Fatal(err)
		}
		settled = after.goroutines <= base.goroutines+maxMoreGoroutines &&
			after.fds <= base.fds+maxMoreFDs && after.rss <= base.rss+maxMoreRSS &&
			after.total(all)-base.total(all) >= float64(load.answered)
		if !settled {
			time.Sleep(250 * time.Millisecond)
		}
	}
	t.Logf("after the load and %v of settling: %v (baseline %v)", time.Since(settleStart).Round(100*time.Millisecond), after, base)
	t.Logf("clients: %d started, %d tries written, %d answered (%d whole 2xx, %d failures, %d 2xx cut short), %d unanswered",
		load.started.Load(), load.wrote.Load(), load.answered, load.okWhole, load.failures, load.truncated, load.unanswered)
	t.Logf("error mix: %s", load.mix())
	t.Logf("policy reloads: %v; requests by code (load only): %v", after.reloads, diff(after.requests, base.requests))

	if after.goroutines > base.goroutines+maxMoreGoroutines {
		_, dump := sc.get("/debug/pprof/goroutine?debug=1")
		t.Errorf("goroutines: %d after, %d before (at most %d more):\n%s", after.goroutines, base.goroutines, maxMoreGoroutines, dump)
	}
	if after.fds > base.fds+maxMoreFDs {
		t.Errorf("open fds: %d after, %d before (at most %d more)", after.fds, base.fds, maxMoreFDs)
	}
	if after.rss > base.rss+maxMoreRSS {
		t.Errorf("RSS: %.1f MiB after, %.1f MiB before (at most %d MiB more)", float64(after.rss)/(1<<20), float64(base.rss)/(1<<20), maxMoreRSS>>20)
	}

	// Every request is counted once, failures as failures.
	recorded := after.total(all) - base.total(all)
	if recorded < float64(load.answered) || recorded > float64(load.wrote.Load()) {
		t.Errorf("minimesh_requests_total grew by %v; want between %d (answered) and %d (tries written)", recorded, load.answered, load.wrote.Load())
	}
	failed := after.total(isFailure) - base.total(isFailure)
	if want := load.failures + load.truncated; failed < float64(want) {
		t.Errorf("minimesh_requests_total counts %v failures (4xx/5xx); the clients saw %d (%d failure answers, %d 2xx cut short)", failed, want, load.failures, load.truncated)
	}
	ok := after.total(isSuccess) - base.total(isSuccess)
	if most := load.okWhole + load.unanswered; ok > float64(most) {
		t.Errorf("minimesh_requests_total counts %v successes; the clients got at most %d (%d whole, %d unanswered)", ok, most, load.okWhole, load.unanswered)
	}
	if load.nViolation > 0 {
		t.Errorf("%d answers broke the contract; the first ones:\n%s", load.nViolation, strings.Join(load.violations, "\n"))
	}

	// No panic, and still serving.
	out := sc.proc.Output()
	if i := strings.Index(out, "panic"); i >= 0 {
		t.Errorf("the sidecar's log has a panic: %s", excerpt(out, i))
	}
	if code, body := sc.get("/ready"); code != http.StatusOK {
		t.Errorf("/ready after the soak: %d %s", code, body)
	}
	c := clients[0].http
	resp, err := c.Get("http://svc-ok:8000/after-soak")
	if err != nil {
		t.Fatalf("a request after the soak: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Upstream") != "ok" {
		t.Errorf("a request after the soak: %s %q", resp.Status, b)
	}
	if u, err := sc.proc.Usage(); err == nil {
		t.Logf("sidecar CPU %v, peak RSS %.1f MiB; whole test %v", u.CPU.Round(time.Millisecond), float64(u.PeakRSS)/(1<<20), time.Since(start).Round(time.Second))
	}
}

func isFailure(code int) bool { return code >= 400 && code != 499 }
func isSuccess(code int) bool { return code >= 200 && code < 400 }

// chaosReport is what chaos did.
type chaosReport struct {
	inPlace, renamed, broken, hups int
	died                           string
}

// chaos rewrites the policy file (in place, by rename, once with a
// mistake) every 400 ms and sends SIGHUP every 2 s until ctx ends. If
// the sidecar dies it ends the load (stop) and says how.
func chaos(ctx context.Context, stop context.CancelFunc, sc *sidecar, file string) (r chaosReport) {
	tick := time.NewTicker(400 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return r
		case <-tick.C:
		}
		content := policies((i / 2) % 2)
		switch {
		case i == 20:
			content = brokenPolicy
			r.broken++
			fallthrough
		case i%2 == 0:
			if err := os.WriteFile(file, []byte(content), 0o644); err == nil {
				r.inPlace++
			}
		default:
			tmp := filepath.Join(filepath.Dir(file), ".soak.tmp")
			if os.WriteFile(tmp, []byte(content), 0o644) == nil && os.Rename(tmp, file) == nil {
				r.renamed++
			}
		}
		if i%5 == 4 {
			if err := syscall.Kill(sc.proc.Pid(), syscall.SIGHUP); err == nil {
				r.hups++
			}
		}
		time.Sleep(50 * time.Millisecond)
		if gone, err := sc.proc.Exited(); gone {
			r.died = fmt.Sprintf("exited (%v) after %d SIGHUPs and %d policy writes; its last output:\n%s",
				err, r.hups, r.inPlace+r.renamed, tail(sc.proc.Output(), 4096))
			stop()
			return r
		}
	}
}

func closeIdle(clients []*client) {
	for _, c := range clients {
		c.tr.CloseIdleConnections()
	}
}

func diff(after, before map[string]float64) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		if n := v - before[k]; n != 0 {
			d[k] = n
		}
	}
	return d
}

func excerpt(s string, i int) string {
	from, to := max(0, i-500), min(len(s), i+3000)
	return s[from:to]
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

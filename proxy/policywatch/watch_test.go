package policywatch_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/policywatch"
)

// recorder collects the results that Run hands to apply.
type recorder struct {
	mu      sync.Mutex
	results []policywatch.Result
	changed chan struct{} // gets a token per result
	// current is what a caller would keep serving: the last good set.
	current []*policy.ResiliencePolicy
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 1000)} }

func (r *recorder) apply(res policywatch.Result) {
	r.mu.Lock()
	r.results = append(r.results, res)
	if res.Err == nil {
		r.current = res.Policies
	}
	r.mu.Unlock()
	r.changed <- struct{}{}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.results)
}

func (r *recorder) last() policywatch.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.results[len(r.results)-1]
}

func (r *recorder) kept() []*policy.ResiliencePolicy {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current
}

// waitFor waits until a result after the first `after` results satisfies
// ok, and returns it. Intermediate results (a file seen half written) are
// allowed and skipped.
func (r *recorder) waitFor(t *testing.T, after int, within time.Duration, what string, ok func(policywatch.Result) bool) policywatch.Result {
	t.Helper()
	deadline := time.After(within)
	for {
		r.mu.Lock()
		for i := after; i < len(r.results); i++ {
			if ok(r.results[i]) {
				res := r.results[i]
				r.mu.Unlock()
				return res
			}
		}
		r.mu.Unlock()
		select {
		case <-r.changed:
		case <-deadline:
			r.mu.Lock()
			n := len(r.results)
			r.mu.Unlock()
			t.Fatalf("no result %s within %v (%d results so far, last: %+v)", what, within, n, r.last())
		}
	}
}

// start runs w until the test ends and returns once the first load was
// applied.
func start(t *testing.T, w *policywatch.Watcher) *recorder {
	t.Helper()
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, rec.apply)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
	rec.waitFor(t, 0, 10*time.Second, "from the first load", func(policywatch.Result) bool { return true })
	return rec
}

// watching returns once the watcher demonstrably sees events in dir: Run
// applies its first load before its watch exists, so a change made at
// once could otherwise be missed (see TestChangeDuringFirstApply). It
// writes a probe policy until a load shows it, then removes it again.
func watching(t *testing.T, rec *recorder, dir string) {
	t.Helper()
	probe := filepath.Join(dir, "zz-probe.yaml")
	has := func(r policywatch.Result) bool { return r.Err == nil && failuresOf(r, "probe-service") > 0 }
	deadline := time.Now().Add(5 * time.Second)
	for i := 1; ; i++ {
		n := rec.count()
		proxytest.WriteFile(t, probe, fmt.Sprintf("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: probe}\nspec:\n  service: probe-service\n  circuitBreaker: {consecutiveFailures: %d}\n", i))
		if ok := waitQuiet(rec, n, time.Second, has); ok { // past Debounce and Settle
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watcher never saw a change in the directory")
		}
	}
	n := rec.count()
	if err := os.Remove(probe); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, n, 10*time.Second, "without the probe", func(r policywatch.Result) bool { return r.Err == nil && failuresOf(r, "probe-service") < 0 })
}

// waitQuiet is waitFor that reports instead of failing.
func waitQuiet(r *recorder, after int, within time.Duration, ok func(policywatch.Result) bool) bool {
	deadline := time.After(within)
	for {
		r.mu.Lock()
		for i := after; i < len(r.results); i++ {
			if ok(r.results[i]) {
				r.mu.Unlock()
				return true
			}
		}
		r.mu.Unlock()
		select {
		case <-r.changed:
		case <-deadline:
			return false
		}
	}
}

func failuresOf(res policywatch.Result, service string) int {
	for _, p := range res.Policies {
		if p.Spec.Service == service {
			return p.Spec.CircuitBreaker.ConsecutiveFailures
		}
	}
	return -1
}

func hasFailures(n int) func(policywatch.Result) bool {
	return func(res policywatch.Result) bool { return res.Err == nil && failuresOf(res, "geo-service") == n }
}

func TestPlainDirectory(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "geo.yaml")
	proxytest.WriteFile(t, file, proxytest.GeoPolicy(5))

	rec := start(t, &policywatch.Watcher{Dir: dir, Debounce: 20 * time.Millisecond, Resync: time.Hour})
	first := rec.last()
	if first.Err != nil || failuresOf(first, "geo-service") != 5 {
		t.Fatalf("first load: err %v, consecutiveFailures %d; want the policy with 5", first.Err, failuresOf(first, "geo-service"))
	}
	watching(t, rec, dir)

	// A change is applied within about a second (no resync: events only).
	n := rec.count()
	proxytest.WriteFile(t, file, proxytest.GeoPolicy(2))
	rec.waitFor(t, n, 10*time.Second, "with consecutiveFailures 2", hasFailures(2))

	// A broken file: an ErrorList naming file:line:col; the caller keeps
	// the last good set.
	n = rec.count()
	proxytest.WriteFile(t, file, proxytest.BrokenPolicy)
	res := rec.waitFor(t, n, 10*time.Second, "with an error", func(r policywatch.Result) bool { return r.Err != nil })
	var list policy.ErrorList
	if !errors.As(res.Err, &list) {
		t.Fatalf("error %T %q is not a policy.ErrorList", res.Err, res.Err)
	}
	if res.Policies != nil {
		t.Errorf("a failed load carries policies: %v", res.Policies)
	}
	if want := regexp.QuoteMeta(file) + `:7:26: `; !regexp.MustCompile(want).MatchString(res.Err.Error()) {
		t.Errorf("error %q does not name %s:7:26", res.Err, file)
	}
	if got := rec.kept(); len(got) != 1 || got[0].Spec.CircuitBreaker.ConsecutiveFailures != 2 {
		t.Errorf("caller's set after the error: %v; want the last good one", got)
	}

	// Fixed: good again.
	n = rec.count()
	proxytest.WriteFile(t, file, proxytest.GeoPolicy(3))
	rec.waitFor(t, n, 10*time.Second, "with consecutiveFailures 3", hasFailures(3))
}

// TestConfigMapVolume builds the layout of a Kubernetes ConfigMap volume
// by hand and updates it the way the kubelet's AtomicWriter does.
func TestConfigMapVolume(t *testing.T) {
	dir := t.TempDir()
	const ts1, ts2 = "..2026_11_24_10_00_00.000000001", "..2026_11_24_10_05_00.000000002"
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(dir, ts1), 0o755))
	proxytest.WriteFile(t, filepath.Join(dir, ts1, "geo.yaml"), proxytest.GeoPolicy(4))
	must(os.Symlink(ts1, filepath.Join(dir, "..data")))
	must(os.Symlink(filepath.Join("..data", "geo.yaml"), filepath.Join(dir, "geo.yaml")))

	rec := start(t, &policywatch.Watcher{Dir: dir, Debounce: 20 * time.Millisecond, Resync: time.Hour})
	first := rec.last()
	if first.Err != nil || len(first.Policies) != 1 || failuresOf(first, "geo-service") != 4 {
		t.Fatalf("first load: err %v, %d policies; want exactly the one policy (the hidden entries must not load it twice)", first.Err, len(first.Policies))
	}
	watching(t, rec, dir)

	// The kubelet's update: new timestamped dir, ..data_tmp pointing at
	// it, atomic rename over ..data, old dir removed.
	n := rec.count()
	must(os.Mkdir(filepath.Join(dir, ts2), 0o755))
	proxytest.WriteFile(t, filepath.Join(dir, ts2, "geo.yaml"), proxytest.GeoPolicy(7))
	must(os.Symlink(ts2, filepath.Join(dir, "..data_tmp")))
	must(os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	must(os.RemoveAll(filepath.Join(dir, ts1)))

	res := rec.waitFor(t, n, 10*time.Second, "with the new ConfigMap content", hasFailures(7))
	if len(res.Policies) != 1 {
		t.Errorf("got %d policies, want 1", len(res.Policies))
	}
	// No load in between saw a broken state (dangling symlink, say).
	rec.mu.Lock()
	r := append([]policywatch.Result(nil), rec.results[n:]...)
	rec.mu.Unlock()
	for _, x := range r {
		if x.Err != nil {
			t.Errorf("a load during the swap failed: %v", x.Err)
		}
	}
}

func TestMissingDirectoryThenCreated(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "policies")

	rec := start(t, &policywatch.Watcher{Dir: dir, Debounce: 20 * time.Millisecond, Resync: 50 * time.Millisecond})
	first := rec.last()
	if len(first.Policies) != 0 {
		t.Fatalf("first load of a missing directory has %d policies, want none (defaults)", len(first.Policies))
	}
	if first.Err != nil {
		t.Logf("first load of a missing directory reports: %v", first.Err)
	}

	// Create it fully formed, as a volume appears: build aside, rename in.
	aside := filepath.Join(parent, "building")
	if err := os.Mkdir(aside, 0o755); err != nil {
		t.Fatal(err)
	}
	proxytest.WriteFile(t, filepath.Join(aside, "geo.yaml"), proxytest.GeoPolicy(6))
	n := rec.count()
	if err := os.Rename(aside, dir); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, n, 10*time.Second, "from the directory created later", hasFailures(6))

	// Once the resync has found the directory, events are watched too.
	n = rec.count()
	proxytest.WriteFile(t, filepath.Join(dir, "geo.yaml"), proxytest.GeoPolicy(8))
	rec.waitFor(t, n, 10*time.Second, "after a change in the created directory", hasFailures(8))
}

func TestUnchangedEventDoesNotReapply(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "geo.yaml")
	proxytest.WriteFile(t, file, proxytest.GeoPolicy(5))

	rec := start(t, &policywatch.Watcher{Dir: dir, Debounce: 20 * time.Millisecond, Resync: 30 * time.Millisecond})
	watching(t, rec, dir)
	n := rec.count()

	// Events that change no policy: the same bytes again, a new mtime, a
	// permission change, an editor's hidden swap file coming and going.
	proxytest.WriteFile(t, file, proxytest.GeoPolicy(5))
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(file, later, later); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, 0o600); err != nil {
		t.Fatal(err)
	}
	swp := filepath.Join(dir, ".geo.yaml.swp")
	proxytest.WriteFile(t, swp, "junk")
	if err := os.Remove(swp); err != nil {
		t.Fatal(err)
	}
	// Several debounce and resync periods pass.
	time.Sleep(300 * time.Millisecond)
	if got := rec.count(); got != n {
		t.Fatalf("%d re-applies after events that changed nothing, want 0: %+v", got-n, rec.last())
	}

	// The watch is still alive: a real change is applied.
	proxytest.WriteFile(t, file, proxytest.GeoPolicy(2))
	rec.waitFor(t, n, 10*time.Second, "after a real change", hasFailures(2))
}

// TestBrokenAtStart: the first load of a broken directory is an error,
// not policies.
func TestBrokenAtStart(t *testing.T) {
	dir := t.TempDir()
	proxytest.WriteFile(t, filepath.Join(dir, "geo.yaml"), proxytest.BrokenPolicy)
	rec := start(t, &policywatch.Watcher{Dir: dir, Debounce: 20 * time.Millisecond, Resync: time.Hour})
	if res := rec.last(); res.Err == nil || res.Policies != nil {
		t.Fatalf("first load of a broken file: %+v; want an error and no policies", res)
	}
	if rec.kept() != nil {
		t.Fatal("a broken first load gave the caller policies")
	}
}

// TestNonPolicyFileDoesNotReapply: a file that Load never reads (a
// README next to the policies) changes no policy.
func TestNonPolicyFileDoesNotReapply(t *testing.T) {
	dir := t.TempDir()
	proxytest.WriteFile(t, filepath.Join(dir, "geo.yaml"), proxytest.GeoPolicy(5))
	rec := start(t, &policywatch.Watcher{Dir: dir, Debounce: 20 * time.Millisecond, Resync: 30 * time.Millisecond})
	watching(t, rec, dir)
	n := rec.count()

	proxytest.WriteFile(t, filepath.Join(dir, "README.md"), "# policies of this namespace\n")
	time.Sleep(300 * time.Millisecond)
	if got := rec.count(); got != n {
		t.Fatalf("%d re-applies after a non-policy file appeared, want 0", got-n)
	}
}

// TestDirectoryRecreated: a policy directory removed and made again (rm
// -r and cp -r in local development) is watched again once the resync has
// found it, instead of being seen only at every resync.
func TestDirectoryRecreated(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "policies")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	proxytest.WriteFile(t, filepath.Join(dir, "geo.yaml"), proxytest.GeoPolicy(5))
	const resync = 1500 * time.Millisecond
	rec := start(t, &policywatch.Watcher{Dir: dir, Debounce: 20 * time.Millisecond, Resync: resync})
	watching(t, rec, dir)

	// Removed: an error load (the caller keeps its set).
	n := rec.count()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, n, 10*time.Second, "after the directory was removed", func(r policywatch.Result) bool { return r.Err != nil })

	// Made again: found at the latest by the next resync.
	aside := filepath.Join(parent, "building")
	if err := os.Mkdir(aside, 0o755); err != nil {
		t.Fatal(err)
	}
	proxytest.WriteFile(t, filepath.Join(aside, "geo.yaml"), proxytest.GeoPolicy(6))
	n = rec.count()
	if err := os.Rename(aside, dir); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, n, 2*resync, "from the recreated directory", hasFailures(6))

	// From then on a change is seen by its event, well before the next
	// resync.
	n = rec.count()
	proxytest.WriteFile(t, filepath.Join(dir, "geo.yaml"), proxytest.GeoPolicy(7))
	rec.waitFor(t, n, resync/2, "by event after the directory came back", hasFailures(7))
}

// TestChangeDuringFirstApply: a change made as soon as the first load is
// applied (the sidecar turns ready at that moment) is seen by its event.
// Run must watch the directory before it loads it, or the change waits
// for the resync.
func TestChangeDuringFirstApply(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "geo.yaml")
	proxytest.WriteFile(t, file, proxytest.GeoPolicy(5))
	rec := newRecorder()
	var once sync.Once
	apply := func(r policywatch.Result) {
		rec.apply(r)
		once.Do(func() { // before Run goes on
			if err := os.WriteFile(file, []byte(proxytest.GeoPolicy(2)), 0o644); err != nil {
				t.Error(err)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&policywatch.Watcher{Dir: dir, Debounce: 20 * time.Millisecond, Resync: time.Hour}).Run(ctx, apply)
	}()
	t.Cleanup(func() { cancel(); <-done })
	rec.waitFor(t, 0, time.Second, "with the change made during the first apply", hasFailures(2))
}

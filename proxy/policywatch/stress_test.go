package policywatch_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/policywatch"
)

// fullSet reports whether r is all three policies of one rewrite.
func fullSet(r policywatch.Result) bool {
	if r.Err != nil || len(r.Policies) != 3 {
		return false
	}
	v := failuresOf(r, "alpha-service")
	return v > 0 && failuresOf(r, "beta-service") == v && failuresOf(r, "gamma-service") == v
}

// TestInPlaceRewritesStress rewrites a policy file in place 200 times
// with the real filesystem and fsnotify while the watcher runs (and
// resyncs often, so that it also reads in the middle of writes): no
// applied load may be anything but the whole set, and the last rewrite
// must be applied.
func TestInPlaceRewritesStress(t *testing.T) {
	const rewrites = 200
	dir := t.TempDir()
	file := filepath.Join(dir, "policies.yaml")
	if err := os.WriteFile(file, []byte(threePolicies(1)), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := start(t, &policywatch.Watcher{Dir: dir, Debounce: 5 * time.Millisecond, Settle: 250 * time.Millisecond, EmptyGrace: 10 * time.Second, Resync: 10 * time.Millisecond})
	watching(t, rec, dir)
	n := rec.count()
	deadline := time.Now().Add(60 * time.Second)
	began := time.Now()
	starts := make([]int, 0, rewrites+1) // rec.count() as each rewrite began
	for i := 2; i < rewrites+2; i++ {
		starts = append(starts, rec.count())
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d rewrites in 60s", i-2, rewrites)
		}
		content := threePolicies(i)
		var err error
		switch {
		case i%20 == 0: // truncated, written after Settle: EmptyGrace holds it
			err = rewriteInPlace(file, content, 0, 300*time.Millisecond)
		case i%2 == 1: // the first document, a pause longer than Debounce, the rest
			err = rewriteInPlace(file, content, firstDocEnd(content), 8*time.Millisecond)
		default:
			err = os.WriteFile(file, []byte(content), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
		if i%20 == 10 { // some rewrites are applied before the next one
			rec.waitFor(t, n, 5*time.Second, fmt.Sprintf("of rewrite %d", i), func(r policywatch.Result) bool { return failuresOf(r, "alpha-service") == i })
		} else {
			time.Sleep(rand.N(20 * time.Millisecond))
		}
	}
	rec.waitFor(t, n, 5*time.Second, "of the last rewrite", func(r policywatch.Result) bool { return fullSet(r) && failuresOf(r, "alpha-service") == rewrites+1 })

	rec.mu.Lock()
	all := append([]policywatch.Result(nil), rec.results...)
	rec.mu.Unlock()
	starts = append(starts, len(all))
	var bad int                 // rewrites during which a partial set was applied
	partial := map[string]int{} // the partial loads applied, by kind
	for i := range rewrites {
		var seen bool
		for _, r := range all[starts[i]:starts[i+1]] {
			if !fullSet(r) {
				seen = true
				partial[kind(r)]++
			}
		}
		if seen {
			bad++
		}
	}
	t.Logf("%d in-place rewrites in %v: %d applied a partial set; %d loads applied, partial ones: %v",
		rewrites, time.Since(began).Round(time.Millisecond), bad, len(all)-starts[0], partial)
	if bad > 0 {
		t.Errorf("%d of %d rewrites applied a partial set (%v), want none", bad, rewrites, partial)
	}
}

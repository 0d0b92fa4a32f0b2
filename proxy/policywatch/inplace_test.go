package policywatch_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/minimesh/minimesh/proxy/policywatch"
)

// threePolicies is one file of three documents, each policy with
// consecutiveFailures v, so that a load shows which rewrite it read.
func threePolicies(v int) string {
	var b strings.Builder
	for _, s := range []string{"alpha", "beta", "gamma"} {
		fmt.Fprintf(&b, "---\napiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: %s}\nspec:\n  service: %s-service\n  circuitBreaker: {consecutiveFailures: %d}\n", s, s, v)
	}
	return b.String()
}

// rewriteInPlace writes content over name without replacing the file:
// truncate, write the first document, pause, write the rest (pause 0 is
// what os.WriteFile and cp do).
func rewriteInPlace(name, content string, cut int, pause time.Duration) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(content[:cut])
	if pause > 0 {
		time.Sleep(pause)
	}
	if err == nil {
		_, err = f.WriteString(content[cut:])
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// firstDocEnd is where the second document of content begins.
func firstDocEnd(content string) int { return strings.Index(content[1:], "---") + 1 }

// kind sorts a load that is not the whole set: "error", "empty" or
// "subset".
func kind(r policywatch.Result) string {
	switch {
	case r.Err != nil:
		return "error"
	case len(r.Policies) == 0:
		return "empty"
	}
	return "subset"
}

// summary names a load in the tables: "empty", "error", or the number
// of policies @ the rewrite they came from.
func summary(r policywatch.Result) string {
	if r.Err != nil || len(r.Policies) == 0 {
		return kind(r)
	}
	return fmt.Sprintf("%d@%d", len(r.Policies), failuresOf(r, "alpha-service"))
}

// TestInPlaceRewriteTimes runs the watcher on a fake clock, seeing
// changes by its resync only (every second, so at 1s, 2s, ...), and
// rewrites the file in place at chosen moments: which loads are applied,
// and when, is exact.
func TestInPlaceRewriteTimes(t *testing.T) {
	const ms = time.Millisecond
	v2 := threePolicies(2)
	firstDoc := firstDocEnd(v2)
	write := func(content string) func(string) error {
		return func(name string) error { return rewriteInPlace(name, content, 0, 0) }
	}
	rest := func(from int) func(string) error {
		return func(name string) error {
			f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteString(v2[from:])
			return errors.Join(err, f.Close())
		}
	}
	// A step does something at a moment, or (do nil) checks every load
	// applied after the first one so far.
	type step struct {
		at      time.Duration
		do      func(name string) error
		applied []string
	}
	for _, c := range []struct {
		name       string
		steps      []step
		duringLoad func(name string) error // at the first reload, between its look and its load
	}{
		{"truncated, written 2s later: never applied empty", []step{
			{500 * ms, write(""), nil},
			{2600 * ms, write(v2), nil}, // resyncs at 1s and 2s saw it empty
			{3100 * ms, nil, nil},       // seen at 3s, settling
			{3300 * ms, nil, []string{"3@2"}},
		}, nil},
		{"emptied on purpose: applied after EmptyGrace", []step{
			{500 * ms, write(""), nil},
			{3900 * ms, nil, nil}, // seen empty at 1s
			{4100 * ms, nil, []string{"empty"}},
		}, nil},
		{"removed: applied after Settle", []step{
			{500 * ms, os.Remove, nil},
			{1100 * ms, nil, nil},
			{1300 * ms, nil, []string{"empty"}},
		}, nil},
		{"first document seen, the rest within Settle: the subset is never applied", []step{
			{950 * ms, write(v2[:firstDoc]), nil},
			{1050 * ms, rest(firstDoc), nil}, // seen again at 1.2s: changed
			{1300 * ms, nil, nil},
			{1500 * ms, nil, []string{"3@2"}},
		}, nil},
		{"cut inside a document, the rest within Settle: the error is never applied", []step{
			{950 * ms, write(v2[:firstDoc+40]), nil},
			{1050 * ms, rest(firstDoc + 40), nil},
			{1500 * ms, nil, []string{"3@2"}},
		}, nil},
		{"the writer stalls longer than Settle: the subset is applied (the limit)", []step{
			{950 * ms, write(v2[:firstDoc]), nil},
			{1250 * ms, nil, []string{"1@2"}},
			{1500 * ms, rest(firstDoc), nil},
			{2300 * ms, nil, []string{"1@2", "3@2"}},
		}, nil},
		{"truncated and written back as it was: nothing applied", []step{
			{950 * ms, write(""), nil},
			{1050 * ms, write(threePolicies(1)), nil},
			{6 * time.Second, nil, nil},
		}, nil},
		{"rewritten while a settled change loads: the half it read is not applied", []step{
			{500 * ms, write(v2), nil}, // seen at 1s, loaded at 1.2s
			{1300 * ms, rest(firstDoc), nil},
			{1500 * ms, nil, nil}, // seen whole again at 1.4s, settling
			{1700 * ms, nil, []string{"3@2"}},
		}, write(v2[:firstDoc])},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				file := filepath.Join(t.TempDir(), "policies.yaml")
				if err := os.WriteFile(file, []byte(threePolicies(1)), 0o644); err != nil {
					t.Fatal(err)
				}
				w := policywatch.WithoutNotify(&policywatch.Watcher{
					Dir: filepath.Dir(file), Settle: 200 * ms, EmptyGrace: 3 * time.Second, Resync: time.Second})
				if c.duringLoad != nil {
					var once sync.Once
					policywatch.BeforeLoad(w, func() {
						once.Do(func() {
							if err := c.duringLoad(file); err != nil {
								t.Error(err)
							}
						})
					})
				}
				began := time.Now()
				rec := start(t, w)
				if got := summary(rec.last()); got != "3@1" {
					t.Fatalf("first load: %s, want 3@1", got)
				}
				for _, s := range c.steps {
					time.Sleep(s.at - time.Since(began))
					synctest.Wait()
					if s.do != nil {
						if err := s.do(file); err != nil {
							t.Fatal(err)
						}
						continue
					}
					rec.mu.Lock()
					var got []string
					for _, r := range rec.results[1:] {
						got = append(got, summary(r))
					}
					rec.mu.Unlock()
					if !slices.Equal(got, s.applied) {
						t.Fatalf("at %v applied %q, want %q", s.at, got, s.applied)
					}
				}
			})
		})
	}
}

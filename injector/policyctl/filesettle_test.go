package policyctl

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// threeDocs is one file of three cluster-wide policies, each with
// timeout v seconds, so that what is served shows which write it read.
func threeDocs(v int) string {
	var b strings.Builder
	for _, s := range []string{"alpha", "beta", "gamma"} {
		fmt.Fprintf(&b, "---\napiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: %s}\nspec: {service: %s, timeout: %ds}\n", s, s, v)
	}
	return b.String()
}

// served is one set handed to the sink: when, counted from the start,
// and "3@2" (3 policies, the first with timeout 2s) or "empty".
type served struct {
	at  time.Duration
	set string
}

// timedSink records what is served and when.
type timedSink struct {
	start time.Time
	mu    sync.Mutex
	sets  []served
}

func (s *timedSink) Set(global []*policy.ResiliencePolicy, byNS map[string][]*policy.ResiliencePolicy) error {
	set := "empty"
	if len(global) > 0 {
		set = fmt.Sprintf("%d@%v", len(global), global[0].Spec.Timeout.Seconds())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sets = append(s.sets, served{time.Since(s.start), set})
	return nil
}

func (s *timedSink) got() []served {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sets)
}

// syncBuffer is a log destination written by Run's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.b.String(), s)
}

// overwrite writes content over name in place: truncate, write the first
// cut bytes, pause, write the rest. A pause of -1 stops after the cut.
func overwrite(t *testing.T, name, content string, cut int, pause time.Duration) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content[:cut]); err != nil {
		t.Fatal(err)
	}
	if pause < 0 {
		return
	}
	time.Sleep(pause)
	if _, err := f.WriteString(content[cut:]); err != nil {
		t.Fatal(err)
	}
}

// TestFilesSettle runs the controller's look at --policy-dir on a fake
// clock (a look every 2 s, so at 2s, 4s, ...) while p.yaml is rewritten
// in place around the look at 2s: what is served, and when, is exact.
// Before, the look at 2s served whatever it read: the first document of
// three, or no policies at all, to every sidecar until the next look.
func TestFilesSettle(t *testing.T) {
	const ms = time.Millisecond
	v2 := threeDocs(2)
	firstDoc := strings.Index(v2[1:], "---") + 1
	tests := []struct {
		name  string
		write func(t *testing.T, p string) // at 1.95s
		want  []served
	}{
		{"two halves, 100ms apart", func(t *testing.T, p string) { overwrite(t, p, v2, firstDoc, 100*ms) },
			// Seen at 2s, changed at 2.2s, the same at 2.4s.
			[]served{{0, "3@1"}, {2400 * ms, "3@2"}}},
		{"truncated, written 1s later", func(t *testing.T, p string) { overwrite(t, p, v2, 0, time.Second) },
			// Empty at 2s: held for 5s; full at 4s, the same at 4.2s.
			[]served{{0, "3@1"}, {4200 * ms, "3@2"}}},
		{"emptied for good", func(t *testing.T, p string) { overwrite(t, p, v2, 0, -1) },
			// Empty since 2s: served at 7s.
			[]served{{0, "3@1"}, {7000 * ms, "empty"}}},
		{"removed", func(t *testing.T, p string) { os.Remove(p) },
			[]served{{0, "3@1"}, {2200 * ms, "empty"}}},
		{"written at once", func(t *testing.T, p string) { overwrite(t, p, v2, len(v2), 0) },
			[]served{{0, "3@1"}, {2200 * ms, "3@2"}}},
		// A writer that pauses longer than the settle time has its half
		// served (docs/operations.md says so: replace files atomically).
		{"two halves, 400ms apart", func(t *testing.T, p string) { overwrite(t, p, v2, firstDoc, 400*ms) },
			[]served{{0, "3@1"}, {2200 * ms, "1@2"}, {4200 * ms, "3@2"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				dir := t.TempDir()
				p := filepath.Join(dir, "p.yaml")
				write(t, dir, "p.yaml", threeDocs(1))
				s := &timedSink{start: time.Now()}
				f := &Files{Dir: dir, Sink: s, Interval: 2 * time.Second, Log: slog.New(slog.DiscardHandler)}
				if err := f.Load(); err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(t.Context())
				go f.Run(ctx)
				time.Sleep(1950 * ms)
				tt.write(t, p)
				time.Sleep(12*time.Second - time.Since(s.start))
				cancel()
				synctest.Wait()
				if got := s.got(); !slices.Equal(got, tt.want) {
					t.Errorf("served %v, want %v", got, tt.want)
				}
			})
		})
	}
}

// TestFilesUnchangedNotDecoded: the files are read and hashed at every
// look, and decoded only when their bytes changed. Before, every look
// decoded the whole set again (a 542 KB file of aliases kept 0.9 core
// busy for good).
func TestFilesUnchangedNotDecoded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		write(t, dir, "p.yaml", threeDocs(1))
		decodes := 0
		f := &Files{Dir: dir, Sink: &sink{}, Log: slog.New(slog.DiscardHandler)}
		f.load = func(dir string) ([]*policy.ResiliencePolicy, error) {
			decodes++
			return policy.PerNamespace.Load(dir)
		}
		if err := f.Load(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go f.Run(ctx)
		step := func(what string, d time.Duration, want int) {
			t.Helper()
			time.Sleep(d)
			synctest.Wait()
			if decodes != want {
				t.Fatalf("%s: %d decodes, want %d", what, decodes, want)
			}
		}
		step("20s of looks at unchanged files", 20*time.Second, 1)
		// A new mtime, or a file no load reads, is no change.
		later := time.Now().Add(time.Hour)
		if err := os.Chtimes(filepath.Join(dir, "p.yaml"), later, later); err != nil {
			t.Fatal(err)
		}
		write(t, dir, "README", "not a policy")
		step("touched, and a README", 10*time.Second, 1)
		write(t, dir, "p.yaml", threeDocs(2))
		step("changed", 10*time.Second, 2)
	})
}

// TestFilesFailureOnce: a set that does not load is logged and counted
// once per content, not at every look, and the last good set keeps
// serving; the set that loads again is logged even if it is the one
// served. Before, a broken 300-document file logged its error every 2 s
// (60 KB of log in 10 s), and the controller counted no loads.
func TestFilesFailureOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		write(t, dir, "p.yaml", threeDocs(1))
		s := &timedSink{start: time.Now()}
		var log syncBuffer
		f := &Files{Dir: dir, Sink: s, Log: slog.New(slog.NewTextHandler(&log, nil))}
		reg := prometheus.NewRegistry()
		if err := f.Report(reg); err != nil {
			t.Fatal(err)
		}
		if err := f.Load(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go f.Run(ctx)
		const failed, ok = "policy files do not load", "policies served from files"
		steps := []struct {
			name              string
			content           string
			failed, ok        int // log lines so far
			errors, successes float64
		}{
			{"broken", strings.Replace(threeDocs(1), "timeout: 1s", "timeout: fast", 1), 1, 1, 1, 1},
			{"broken otherwise", strings.Replace(threeDocs(1), "timeout: 1s", "timeout: slow", 1), 2, 1, 2, 1},
			{"the served set again", threeDocs(1), 2, 2, 2, 2},
			{"broken as before", strings.Replace(threeDocs(1), "timeout: 1s", "timeout: fast", 1), 3, 2, 3, 2},
		}
		for _, st := range steps {
			write(t, dir, "p.yaml", st.content)
			time.Sleep(20 * time.Second)
			synctest.Wait()
			if n := log.count(failed); n != st.failed {
				t.Errorf("%s: %d lines %q, want %d", st.name, n, failed, st.failed)
			}
			if n := log.count(ok); n != st.ok {
				t.Errorf("%s: %d lines %q, want %d", st.name, n, ok, st.ok)
			}
			for result, want := range map[string]float64{"error": st.errors, "success": st.successes} {
				if got := counterValue(t, reg, "minimesh_policy_reloads_total", "result", result); got != want {
					t.Errorf("%s: minimesh_policy_reloads_total{result=%q} = %v, want %v", st.name, result, got, want)
				}
			}
			if got := s.got(); len(got) != 1 || got[0].set != "3@1" {
				t.Errorf("%s: served %v, want the first set only", st.name, got)
			}
		}
	})
}

// counterValue is the value of name{label=value} in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, label, value)
	return 0
}

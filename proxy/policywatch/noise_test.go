package policywatch_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/minimesh/minimesh/proxy/policywatch"
)

// replace writes content to name by rename, as a ConfigMap update or a
// careful writer does, so that a look never reads it half written.
func replace(name, content string) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

// TestEventNoise runs the watcher on a fake clock with the events it
// would get from fsnotify sent by the test, with no resync: a change to
// the policies is seen by its events only, and when it is applied is
// exact. Before, every event, whatever its name, put the look off by
// another Debounce: a file written more often than that (a log, an
// editor's swap file) kept a policy change out until the resync (10 s,
// 18.8 s measured), and so did a policy file written continuously.
func TestEventNoise(t *testing.T) {
	const ms = time.Millisecond
	const changeAt = time.Second
	type layout func(t *testing.T, dir string) // puts threePolicies(1) in force
	plain := func(t *testing.T, dir string) {
		if err := os.WriteFile(filepath.Join(dir, "policies.yaml"), []byte(threePolicies(1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const ts1, ts2 = "..2026_12_06_10_00_00.000000001", "..2026_12_06_10_05_00.000000002"
	configMap := func(t *testing.T, dir string) {
		if err := os.Mkdir(filepath.Join(dir, ts1), 0o755); err != nil {
			t.Fatal(err)
		}
		plain(t, filepath.Join(dir, ts1))
		if err := os.Symlink(ts1, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", "policies.yaml"), filepath.Join(dir, "policies.yaml")); err != nil {
			t.Fatal(err)
		}
	}
	// policies.yaml -> live: a file whose name is no policy file's.
	linked := func(t *testing.T, dir string) {
		if err := os.WriteFile(filepath.Join(dir, "live"), []byte(threePolicies(1)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("live", filepath.Join(dir, "policies.yaml")); err != nil {
			t.Fatal(err)
		}
	}
	// policies.yaml -> <dir>/live/policies.yaml, live -> v1: a symlink by
	// absolute path (ln -s "$PWD/live/policies.yaml"), through a directory
	// swapped by rename.
	absLinked := func(t *testing.T, dir string) {
		if err := os.Mkdir(filepath.Join(dir, "v1"), 0o755); err != nil {
			t.Fatal(err)
		}
		plain(t, filepath.Join(dir, "v1"))
		if err := os.Symlink("v1", filepath.Join(dir, "live")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(dir, "live", "policies.yaml"), filepath.Join(dir, "policies.yaml")); err != nil {
			t.Fatal(err)
		}
	}
	ev := func(dir, name string, op fsnotify.Op) fsnotify.Event {
		return fsnotify.Event{Name: filepath.Join(dir, name), Op: op}
	}
	for _, c := range []struct {
		name   string
		layout layout
		noise  string // a file written, with its event, every 50ms from the start; "" none
		// change changes the policies at changeAt and returns the events
		// it caused; with every, it is done again every 50ms after that.
		change func(dir string) ([]fsnotify.Event, error)
		every  bool
		within time.Duration // from changeAt to the change's load applied
		want   string        // summary of that load
	}{
		{"a log file written every 50ms: the change in force after Debounce and Settle", plain, "app.log",
			func(dir string) ([]fsnotify.Event, error) {
				return []fsnotify.Event{ev(dir, "policies.yaml", fsnotify.Write)},
					os.WriteFile(filepath.Join(dir, "policies.yaml"), []byte(threePolicies(2)), 0o644)
			}, false, 300 * ms, "3@2"},
		{"an editor's swap file written every 50ms", plain, ".policies.yaml.swp",
			func(dir string) ([]fsnotify.Event, error) {
				return []fsnotify.Event{ev(dir, "policies.yaml.tmp", fsnotify.Create), ev(dir, "policies.yaml", fsnotify.Create)},
					replace(filepath.Join(dir, "policies.yaml"), threePolicies(2))
			}, false, 300 * ms, "3@2"},
		{"a ConfigMap's ..data swap amid noise", configMap, "app.log",
			func(dir string) ([]fsnotify.Event, error) {
				evs := []fsnotify.Event{ev(dir, ts2, fsnotify.Create), ev(dir, "..data_tmp", fsnotify.Create),
					ev(dir, "..data_tmp", fsnotify.Rename), ev(dir, "..data", fsnotify.Create), ev(dir, ts1, fsnotify.Remove)}
				if err := os.Mkdir(filepath.Join(dir, ts2), 0o755); err != nil {
					return nil, err
				}
				if err := os.WriteFile(filepath.Join(dir, ts2, "policies.yaml"), []byte(threePolicies(2)), 0o644); err != nil {
					return nil, err
				}
				if err := os.Symlink(ts2, filepath.Join(dir, "..data_tmp")); err != nil {
					return nil, err
				}
				if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
					return nil, err
				}
				return evs, os.RemoveAll(filepath.Join(dir, ts1))
			}, false, 300 * ms, "3@2"},
		{"the file a policy symlink points to, replaced amid noise", linked, "app.log",
			func(dir string) ([]fsnotify.Event, error) {
				return []fsnotify.Event{ev(dir, "live.tmp", fsnotify.Create), ev(dir, "live", fsnotify.Create)},
					replace(filepath.Join(dir, "live"), threePolicies(2))
			}, false, 300 * ms, "3@2"},
		// Before, an absolute target was not followed: no event counted
		// and the change waited for the resync.
		{"a directory a policy symlink points through by absolute path, swapped by rename amid noise", absLinked, "app.log",
			func(dir string) ([]fsnotify.Event, error) {
				evs := []fsnotify.Event{ev(dir, "v2", fsnotify.Create), ev(dir, "live.tmp", fsnotify.Create),
					ev(dir, "live.tmp", fsnotify.Rename), ev(dir, "live", fsnotify.Create)}
				if err := os.Mkdir(filepath.Join(dir, "v2"), 0o755); err != nil {
					return nil, err
				}
				if err := os.WriteFile(filepath.Join(dir, "v2", "policies.yaml"), []byte(threePolicies(2)), 0o644); err != nil {
					return nil, err
				}
				if err := os.Symlink("v2", filepath.Join(dir, "live.tmp")); err != nil {
					return nil, err
				}
				return evs, os.Rename(filepath.Join(dir, "live.tmp"), filepath.Join(dir, "live"))
			}, false, 300 * ms, "3@2"},
		{"the directory removed amid noise", plain, "app.log",
			func(dir string) ([]fsnotify.Event, error) {
				return []fsnotify.Event{ev(dir, "policies.yaml", fsnotify.Remove), {Name: dir, Op: fsnotify.Remove}},
					os.RemoveAll(dir)
			}, false, 300 * ms, "error"},
		// Looked at 1s (MaxDelay) after the first write, again 1s after
		// the next one, by when it has stayed the same for Settle.
		{"a policy file rewritten with the same bytes every 50ms: applied within 2 MaxDelay", plain, "",
			func(dir string) ([]fsnotify.Event, error) {
				return []fsnotify.Event{ev(dir, "policies.yaml", fsnotify.Create)},
					replace(filepath.Join(dir, "policies.yaml"), threePolicies(2))
			}, true, 2050 * ms, "3@2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "policies")
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				c.layout(t, dir)
				events := make(chan fsnotify.Event)
				w := policywatch.WithEvents(&policywatch.Watcher{Dir: dir, Resync: time.Hour}, events)
				began := time.Now()
				rec := start(t, w)
				if got := summary(rec.last()); got != "3@1" {
					t.Fatalf("first load: %s, want 3@1", got)
				}
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				t.Cleanup(func() { cancel(); wg.Wait() })
				send := func(evs []fsnotify.Event) bool {
					for _, e := range evs {
						select {
						case events <- e:
						case <-ctx.Done():
							return false
						}
					}
					return true
				}
				// every runs f every 50ms from now until the test ends.
				every := func(f func() []fsnotify.Event) {
					wg.Go(func() {
						tick := time.NewTicker(50 * ms)
						defer tick.Stop()
						for {
							if !send(f()) {
								return
							}
							select {
							case <-tick.C:
							case <-ctx.Done():
								return
							}
						}
					})
				}
				if c.noise != "" {
					every(func() []fsnotify.Event {
						f, err := os.OpenFile(filepath.Join(dir, c.noise), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
						if err == nil { // the directory may be gone
							f.WriteString("a line\n")
							f.Close()
						}
						return []fsnotify.Event{ev(dir, c.noise, fsnotify.Write)}
					})
				}

				time.Sleep(changeAt - time.Since(began))
				synctest.Wait()
				if got := rec.count(); got != 1 {
					t.Fatalf("%d loads applied before the change, want none: the noise is no change", got-1)
				}
				if c.every {
					every(func() []fsnotify.Event {
						evs, err := c.change(dir)
						if err != nil {
							t.Error(err)
						}
						return evs
					})
				} else {
					evs, err := c.change(dir)
					if err != nil {
						t.Fatal(err)
					}
					send(evs)
				}

				time.Sleep(changeAt + c.within - time.Since(began))
				synctest.Wait()
				rec.mu.Lock()
				var got []string
				for _, r := range rec.results[1:] {
					got = append(got, summary(r))
				}
				rec.mu.Unlock()
				if want := []string{c.want}; !slices.Equal(got, want) {
					t.Fatalf("%v after the change: applied %q, want %q", c.within, got, want)
				}
			})
		})
	}
}

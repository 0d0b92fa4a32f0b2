package policywatch_test

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/policywatch"
)

// TestSingleFile: a --policy-dir that names a file reloads on its edits
// as a directory does, by events alone (no resync), however the file is
// written. Before, the watcher hashed only that the path was no
// directory: it loaded once, and only a SIGHUP applied an edit.
func TestSingleFile(t *testing.T) {
	must := func(t *testing.T, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name string
		// setup writes the policy with n failures and returns the path to
		// watch; edit writes it with n.
		setup func(t *testing.T, dir string, n int) string
		edit  func(t *testing.T, dir string, n int)
	}{
		{"written in place", func(t *testing.T, dir string, n int) string {
			proxytest.WriteFile(t, filepath.Join(dir, "single.yaml"), proxytest.GeoPolicy(n))
			return filepath.Join(dir, "single.yaml")
		}, func(t *testing.T, dir string, n int) {
			proxytest.WriteFile(t, filepath.Join(dir, "single.yaml"), proxytest.GeoPolicy(n))
		}},
		{"a new file renamed over it, any name", func(t *testing.T, dir string, n int) string {
			proxytest.WriteFile(t, filepath.Join(dir, "geo.conf"), proxytest.GeoPolicy(n))
			return filepath.Join(dir, "geo.conf")
		}, func(t *testing.T, dir string, n int) {
			proxytest.WriteFile(t, filepath.Join(dir, "geo.conf.tmp"), proxytest.GeoPolicy(n))
			must(t, os.Rename(filepath.Join(dir, "geo.conf.tmp"), filepath.Join(dir, "geo.conf")))
		}},
		{"a ConfigMap key, its volume updated", func(t *testing.T, dir string, n int) string {
			must(t, os.Mkdir(filepath.Join(dir, "..v1"), 0o755))
			proxytest.WriteFile(t, filepath.Join(dir, "..v1", "geo.yaml"), proxytest.GeoPolicy(n))
			must(t, os.Symlink("..v1", filepath.Join(dir, "..data")))
			must(t, os.Symlink(filepath.Join("..data", "geo.yaml"), filepath.Join(dir, "geo.yaml")))
			return filepath.Join(dir, "geo.yaml")
		}, func(t *testing.T, dir string, n int) {
			must(t, os.Mkdir(filepath.Join(dir, fmt.Sprint("..v", n)), 0o755))
			proxytest.WriteFile(t, filepath.Join(dir, fmt.Sprint("..v", n), "geo.yaml"), proxytest.GeoPolicy(n))
			old, _ := os.Readlink(filepath.Join(dir, "..data"))
			must(t, os.Symlink(fmt.Sprint("..v", n), filepath.Join(dir, "..data_tmp")))
			must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
			must(t, os.RemoveAll(filepath.Join(dir, old)))
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			file := tt.setup(t, dir, 5)
			rec := start(t, &policywatch.Watcher{Dir: file, Debounce: 20 * time.Millisecond, Resync: time.Hour})
			if res := rec.last(); res.Err != nil || failuresOf(res, "geo-service") != 5 {
				t.Fatalf("first load: %v, %d policies; want geo's", res.Err, len(res.Policies))
			}
			for _, n := range []int{2, 3} { // twice: the watch outlives an edit
				before := rec.count()
				tt.edit(t, dir, n)
				rec.waitFor(t, before, 10*time.Second, "with the edit", hasFailures(n))
			}
		})
	}
}

// TestSkippedInResult: the entries of the directory that a load passed
// over come with its result, for the sidecar's log, hidden ones (a
// ConfigMap volume's) aside.
func TestSkippedInResult(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "..v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	proxytest.WriteFile(t, filepath.Join(dir, "..v1", "geo.yaml"), proxytest.GeoPolicy(5))
	proxytest.WriteFile(t, filepath.Join(dir, "..v1", "maps"), proxytest.GeoPolicy(1))
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"geo.yaml", "maps"} {
		if err := os.Symlink(filepath.Join("..data", key), filepath.Join(dir, key)); err != nil {
			t.Fatal(err)
		}
	}
	rec := start(t, &policywatch.Watcher{Dir: dir, Debounce: 20 * time.Millisecond, Resync: time.Hour})
	res := rec.last()
	var got []string
	for _, s := range res.Skipped {
		got = append(got, s.String())
	}
	if want := []string{"skipped " + filepath.Join(dir, "maps") + ": not .yaml, .yml or .json"}; res.Err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("first load: %v, skipped %q; want %q", res.Err, got, want)
	}
}

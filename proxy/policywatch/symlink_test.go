package policywatch_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/policywatch"
)

// TestAbsoluteSymlinkSwap is the layout `ln -s "$PWD/live/geo.yaml"`
// makes, with real fsnotify events: geo.yaml -> <dir>/live/geo.yaml,
// live -> v1, and live swapped to v2 by rename. The rename's events name
// live and live.tmp only; before, live was not taken as something a
// policy file goes through when the link was absolute, and the change
// waited for the resync (not within 5 s measured; an hour here).
func TestAbsoluteSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(dir, "v1"), 0o755))
	proxytest.WriteFile(t, filepath.Join(dir, "v1", "geo.yaml"), proxytest.GeoPolicy(4))
	must(os.Symlink("v1", filepath.Join(dir, "live")))
	must(os.Symlink(filepath.Join(dir, "live", "geo.yaml"), filepath.Join(dir, "geo.yaml")))

	rec := start(t, &policywatch.Watcher{Dir: dir, Resync: time.Hour})
	if got := failuresOf(rec.last(), "geo-service"); got != 4 {
		t.Fatalf("first load: consecutiveFailures %d, want 4 (err %v)", got, rec.last().Err)
	}
	watching(t, rec, dir)

	n := rec.count()
	swapped := time.Now()
	must(os.Mkdir(filepath.Join(dir, "v2"), 0o755))
	proxytest.WriteFile(t, filepath.Join(dir, "v2", "geo.yaml"), proxytest.GeoPolicy(7))
	must(os.Symlink("v2", filepath.Join(dir, "live.tmp")))
	must(os.Rename(filepath.Join(dir, "live.tmp"), filepath.Join(dir, "live")))

	// Debounce and Settle make 0.3 s; the rest is room for a loaded
	// machine, far below the resync.
	rec.waitFor(t, n, 5*time.Second, "with consecutiveFailures 7", hasFailures(7))
	t.Logf("applied %v after the swap", time.Since(swapped).Round(time.Millisecond))
}

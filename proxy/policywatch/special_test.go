package policywatch_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/policywatch"
)

// TestSpecialFiles: the watcher reads no named pipe, neither one given as
// its directory nor one among the directory's policy files: either
// blocked its look, and so the sidecar's first load, for good. One
// beside the policies is passed over as Load passes it over; one as the
// directory is Load's error.
func TestSpecialFiles(t *testing.T) {
	for _, tt := range []struct {
		name    string
		setup   func(t *testing.T, dir string) (watched, fifo string)
		wantErr string // "" for the geo policy loaded
	}{
		{"named pipe as the directory", func(t *testing.T, dir string) (string, string) {
			fifo := mkfifo(t, filepath.Join(dir, "policies"))
			return fifo, fifo
		}, "not a regular file (a named pipe)"},
		{"named pipe among the policy files", func(t *testing.T, dir string) (string, string) {
			proxytest.WriteFile(t, filepath.Join(dir, "geo.yaml"), proxytest.GeoPolicy(5))
			return dir, mkfifo(t, filepath.Join(dir, "pipe.yaml"))
		}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			watched, fifo := tt.setup(t, t.TempDir())
			t.Cleanup(func() { release(fifo) }) // runs after start's
			rec := start(t, &policywatch.Watcher{Dir: watched, Debounce: 20 * time.Millisecond, Resync: time.Hour})
			res := rec.last()
			if tt.wantErr != "" {
				if !errors.Is(res.Err, policy.ErrNotRegular) || !strings.Contains(res.Err.Error(), tt.wantErr) {
					t.Fatalf("first load: %v; want %q", res.Err, tt.wantErr)
				}
				return
			}
			if res.Err != nil || failuresOf(res, "geo-service") != 5 {
				t.Fatalf("first load: %v, %d policies; want geo's", res.Err, len(res.Policies))
			}
		})
	}
}

func mkfifo(t *testing.T, path string) string {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// release opens the pipe as a writer too, so that a reader blocked on it
// (the old watcher) goes on and the test ends with a failure, not a hang.
func release(fifo string) {
	if f, err := os.OpenFile(fifo, os.O_RDWR, 0); err == nil {
		f.Close()
	}
}

package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mkfifo makes a named pipe, the file that blocked a reader for good.
func mkfifo(t *testing.T, path string) string {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// loadOrRelease is Load, failing the test rather than hanging when the
// load blocks on a named pipe: past the guard it opens the pipe as a
// writer too, which lets a reader blocked in open or read go on (to EOF).
func loadOrRelease(t *testing.T, fifo string, paths ...string) ([]*ResiliencePolicy, error) {
	t.Helper()
	type result struct {
		pols []*ResiliencePolicy
		err  error
	}
	done := make(chan result, 1)
	go func() {
		pols, err := Load(paths...)
		done <- result{pols, err}
	}()
	select {
	case r := <-done:
		return r.pols, r.err
	case <-time.After(10 * time.Second):
		if f, err := os.OpenFile(fifo, os.O_RDWR, 0); err == nil {
			f.Close()
		}
		t.Fatalf("Load(%q) blocked on the named pipe %s", paths, fifo)
		return nil, nil
	}
}

// TestLoadRefusesSpecialFiles: a path named explicitly that is not a
// regular file, once symlinks are followed, is refused with an error that
// names it and says what it is, at once: a named pipe blocked the load
// until a writer came (minimesh policy lint hung, and the sidecar never
// turned ready), /dev/zero ran it out of memory.
func TestLoadRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := mkfifo(t, filepath.Join(dir, "p.yaml"))
	symlink(t, fifo, filepath.Join(dir, "via-link.yaml"))
	symlink(t, "/dev/zero", filepath.Join(dir, "zero.yaml"))
	good := filepath.Join(dir, "good.yaml")
	write(t, good, policyYAML("geo"))
	for _, tt := range []struct {
		name, path, want string
	}{
		{"named pipe", fifo, "load " + fifo + ": not a regular file (a named pipe)"},
		{"symlink to a named pipe", filepath.Join(dir, "via-link.yaml"), "(a named pipe)"},
		{"character device", "/dev/zero", "load /dev/zero: not a regular file (a character device)"},
		{"symlink to a device", filepath.Join(dir, "zero.yaml"), "(a character device)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// With a good file first: the refusal is of the whole set.
			pols, err := loadOrRelease(t, fifo, good, tt.path)
			if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), tt.want) || pols != nil {
				t.Fatalf("Load = %d policies, %v; want no policies and an error with %q", len(pols), err, tt.want)
			}
		})
	}
}

// TestLoadSpecialDirectoryEntries: in a directory a named pipe is passed
// over (as it always was), the regular files beside it loaded, and a
// symlink to a regular file (a ConfigMap key) read.
func TestLoadSpecialDirectoryEntries(t *testing.T) {
	dir := t.TempDir()
	fifo := mkfifo(t, filepath.Join(dir, "a-pipe.yaml"))
	write(t, filepath.Join(dir, "data", "b.yaml"), policyYAML("geo"))
	symlink(t, filepath.Join("data", "b.yaml"), filepath.Join(dir, "b.yaml"))
	pols, err := loadOrRelease(t, fifo, dir)
	if err != nil || len(pols) != 1 || pols[0].Spec.Service != "geo" {
		t.Fatalf("Load = %v, %v; want the policy of b.yaml", services(pols), err)
	}
	// Passed over, and said so: a pipe named .yaml is likely a mistake.
	_, rep, _ := OneSidecar.LoadReport(dir)
	if len(rep.Skipped) != 2 || rep.Skipped[0].String() != "skipped "+fifo+": not a regular file (a named pipe)" || rep.Skipped[1].Reason != "a directory, not searched" {
		t.Errorf("skipped %v; want the pipe and data/", rep.Skipped)
	}
}

// TestLoadSizeCap: a file over MaxFileBytes is refused, naming the file
// and the cap, without being read whole; one of exactly MaxFileBytes is
// read.
func TestLoadSizeCap(t *testing.T) {
	dir := t.TempDir()
	sized := func(name string, size int64) string {
		path := filepath.Join(dir, name)
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(policyYAML("geo") + "#"); err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil { // sparse: zeros, never written
			t.Fatal(err)
		}
		return path
	}
	for _, tt := range []struct {
		name string
		size int64
		want string // "" for no size error
	}{
		{"at the cap", MaxFileBytes, ""},
		{"one byte over", MaxFileBytes + 1, "larger than 8 MiB, the most a policy file may hold"},
		{"a gigabyte", 1 << 30, "larger than 8 MiB, the most a policy file may hold"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := sized(strings.ReplaceAll(tt.name, " ", "-")+".yaml", tt.size)
			data, err := ReadFile(path)
			if tt.want == "" {
				if err != nil || int64(len(data)) != tt.size {
					t.Fatalf("ReadFile = %d bytes, %v; want all %d", len(data), err, tt.size)
				}
				return
			}
			if err == nil || err.Error() != "load "+path+": "+tt.want || data != nil {
				t.Fatalf("ReadFile = %d bytes, %v; want load %s: %s", len(data), err, path, tt.want)
			}
			// Load says the same, and of the whole set.
			if _, err := Load(path); err == nil || err.Error() != "load "+path+": "+tt.want {
				t.Fatalf("Load: %v", err)
			}
		})
	}
}

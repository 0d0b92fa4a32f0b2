package memlimit

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func cgroupRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCgroupMemoryLimit(t *testing.T) {
	for _, c := range []struct {
		name    string
		files   map[string]string
		want    int64
		wantErr bool
	}{
		{"v2", map[string]string{"memory.max": "134217728\n"}, 134217728, false},
		{"v2 max", map[string]string{"memory.max": "max\n"}, 0, false},
		{"v1", map[string]string{"memory/memory.limit_in_bytes": "268435456\n"}, 268435456, false},
		{"v1 unlimited", map[string]string{"memory/memory.limit_in_bytes": "9223372036854771712\n"}, 0, false},
		{"v2 before v1", map[string]string{"memory.max": "134217728", "memory/memory.limit_in_bytes": "1"}, 134217728, false},
		{"none", nil, 0, false},
		{"garbage", map[string]string{"memory.max": "lots\n"}, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, file, err := cgroupMemoryLimit(cgroupRoot(t, c.files))
			if got != c.want || (err != nil) != c.wantErr {
				t.Errorf("cgroupMemoryLimit = %d, %q, %v; want %d, error %v", got, file, err, c.want, c.wantErr)
			}
		})
	}
}

func TestSet(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))

	root := cgroupRoot(t, map[string]string{"memory.max": "134217728\n"})
	const want = 134217728 / 100 * 90
	if got := Set(root, log); got != want {
		t.Errorf("SetMemoryLimit = %d, want %d", got, want)
	}
	if got := debug.SetMemoryLimit(-1); got != want {
		t.Errorf("runtime memory limit %d, want %d", got, want)
	}
	if !strings.Contains(logs.String(), `"limit_bytes":120795930`) || !strings.Contains(logs.String(), "memory.max") {
		t.Errorf("log does not give the limit and its source:\n%s", logs.String())
	}

	// No limit in the container: the runtime's is left alone.
	debug.SetMemoryLimit(old)
	if got := Set(cgroupRoot(t, map[string]string{"memory.max": "max\n"}), log); got != 0 {
		t.Errorf("SetMemoryLimit with memory.max max = %d, want 0", got)
	}
	if got := debug.SetMemoryLimit(-1); got != old {
		t.Errorf("runtime memory limit %d, want it untouched (%d)", got, old)
	}
}

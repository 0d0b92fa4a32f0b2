package tools

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var built struct {
	sync.Mutex
	dir   string
	paths map[string]string
}

// Built is minimesh's binary name (its main package pkg, e.g.
// ./proxy/cmd/minimesh-proxy) from MINIMESH_BIN_DIR when the Makefile set
// it, else built from this tree once per test process, for a plain `go
// test` run by hand. A test package that may build calls RemoveBuilt from
// its TestMain.
func Built(name, pkg string) (string, error) {
	if os.Getenv("MINIMESH_BIN_DIR") != "" {
		return Binary(name)
	}
	built.Lock()
	defer built.Unlock()
	if p, ok := built.paths[name]; ok {
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	if built.dir == "" {
		if built.dir, err = os.MkdirTemp("", "minimesh-e2e-bin-"); err != nil {
			return "", err
		}
		built.paths = map[string]string{}
	}
	out := filepath.Join(built.dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	built.paths[name] = out
	return out, nil
}

// BuiltT is Built for a test, which fails without the binary.
func BuiltT(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := Built(name, pkg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// RemoveBuilt removes what Built built.
func RemoveBuilt() {
	built.Lock()
	defer built.Unlock()
	if built.dir != "" {
		os.RemoveAll(built.dir)
		built.dir, built.paths = "", nil
	}
}

package tools

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDir(t *testing.T) {
	t.Setenv("MINIMESH_TOOLS_DIR", "")
	t.Setenv("XDG_CACHE_HOME", "/x/cache")
	if got, want := Dir(), "/x/cache/minimesh/tools"; got != want {
		t.Errorf("Dir() = %q, want %q", got, want)
	}
	t.Setenv("MINIMESH_TOOLS_DIR", "/y")
	if got := Dir(); got != "/y" {
		t.Errorf("Dir() = %q, want /y", got)
	}
}

func TestFind(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("MINIMESH_TOOLS_DIR", dir)
	t.Setenv("PATH", "")
	if _, err := Find("no-such-tool-xyz"); err == nil || !strings.Contains(err.Error(), "make tools") {
		t.Errorf("Find(missing) error = %v, want one that says to run make tools", err)
	}

	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	cached := filepath.Join(dir, "bin", "sometool")
	if err := os.WriteFile(cached, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := Find("sometool"); err != nil || got != cached {
		t.Errorf("Find = %q, %v; want %q", got, err, cached)
	}

	other := filepath.Join(dir, "other")
	if err := os.WriteFile(other, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvName("sometool"), other)
	if got, err := Find("sometool"); err != nil || got != other {
		t.Errorf("Find with %s = %q, %v; want %q", EnvName("sometool"), got, err, other)
	}
	t.Setenv(EnvName("sometool"), filepath.Join(dir, "missing"))
	if _, err := Find("sometool"); err == nil {
		t.Error("Find with an override naming a missing file: no error")
	}
}

func TestEnvName(t *testing.T) {
	if got, want := EnvName("kube-apiserver"), "MINIMESH_TOOL_KUBE_APISERVER"; got != want {
		t.Errorf("EnvName = %q, want %q", got, want)
	}
}

func TestBinDir(t *testing.T) {
	t.Setenv("MINIMESH_BIN_DIR", "")
	dir, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "go.mod")); err != nil {
		t.Errorf("BinDir() = %q: no go.mod beside it", dir)
	}
	t.Setenv("MINIMESH_BIN_DIR", "/z/bin")
	if _, err := Binary("minimesh-proxy"); err == nil || !strings.Contains(err.Error(), "make build") {
		t.Errorf("Binary(missing) error = %v, want one that says to run make build", err)
	}
}

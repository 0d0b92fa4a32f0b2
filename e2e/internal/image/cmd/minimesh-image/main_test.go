package main

import (
	"archive/tar"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/minimesh/minimesh/e2e/internal/proc"
)

// TestRun writes the tar where asked, and names the image in index.json,
// where ctr reads the name.
func TestRun(t *testing.T) {
	bin := t.TempDir()
	for _, name := range []string{"minimesh-proxy", "minimesh"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "dist", "minimesh-image.tar")
	if err := run(bin, "minimesh.local/minimesh:t", out); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			t.Fatal("no index.json")
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name != "index.json" {
			continue
		}
		var index struct {
			Manifests []struct{ Annotations map[string]string }
		}
		if err := json.NewDecoder(tr).Decode(&index); err != nil {
			t.Fatal(err)
		}
		if len(index.Manifests) != 1 || index.Manifests[0].Annotations["io.containerd.image.name"] != "minimesh.local/minimesh:t" {
			t.Fatalf("index.json: %+v", index)
		}
		return
	}
}

// TestRunWithoutBinaries fails, and leaves nothing behind.
func TestRunWithoutBinaries(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "minimesh-image.tar")
	if err := run(filepath.Join(dir, "nobin"), "r", out); err == nil {
		t.Fatal("no error without binaries")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left %v", ents)
	}
}

// TestRunInit writes the init image where asked, with Debian's iptables
// of this host.
func TestRunInit(t *testing.T) {
	if _, err := os.Lstat("/usr/sbin/iptables-nft-save"); err != nil {
		proc.Unmet(t, "no Debian iptables here (scripts/tools.sh installs it): %v", err)
	}
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "minimesh-proxy"), []byte("minimesh-proxy"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "dist", "minimesh-init-image.tar")
	if err := runInit(bin, "minimesh.local/minimesh-init:t", out); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(out); err != nil || fi.Size() < 1<<20 {
		t.Fatalf("%s: %v, %v", out, fi, err)
	}
}

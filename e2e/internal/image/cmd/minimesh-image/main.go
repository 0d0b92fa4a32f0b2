// Command minimesh-image writes minimesh's image (image.Minimesh: the
// Dockerfile's, built without Docker) from the binaries of `make build`
// as an OCI image layout tar, for `ctr -n k8s.io images import`.
//
//	minimesh-image -bin bin -ref minimesh.local/minimesh:v1 -out dist/minimesh-image.tar
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/minimesh/minimesh/e2e/internal/image"
)

func main() {
	bin := flag.String("bin", "bin", "directory of minimesh-proxy and minimesh (`make build`)")
	ref := flag.String("ref", "minimesh.local/minimesh:dev", "the image's name, fully qualified")
	out := flag.String("out", "dist/minimesh-image.tar", "the OCI layout tar to write")
	flag.Parse()
	if err := run(*bin, *ref, *out); err != nil {
		fmt.Fprintln(os.Stderr, "minimesh-image:", err)
		os.Exit(1)
	}
}

func run(bin, ref, out string) error {
	img := image.Minimesh(bin, ref)
	if _, err := os.Stat(image.CACerts); err != nil {
		fmt.Fprintf(os.Stderr, "minimesh-image: no %s on this host: the image holds no CA certificates\n", image.CACerts)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	// Written beside, then renamed: an interrupted run leaves no
	// half-written tar at out.
	tmp, err := os.CreateTemp(filepath.Dir(out), ".minimesh-image-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	if err := image.WriteOCI(w, img); err != nil {
		tmp.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	fmt.Printf("image %s\nwrote %s (load it: ctr -n k8s.io images import %s)\n", ref, out, out)
	return nil
}

// Command minimesh-image writes minimesh's image (image.Minimesh: the
// Dockerfile's, built without Docker) from the binaries of `make build`
// as an OCI image layout tar, for `ctr -n k8s.io images import`; and,
// with -init-out, the init container's image of iptables interception
// (image.MinimeshInit: the Dockerfile's init stage, with this host's
// Debian iptables).
//
//	minimesh-image -bin bin -ref minimesh.local/minimesh:v1 -out dist/minimesh-image.tar \
//	    -init-out dist/minimesh-init-image.tar
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/minimesh/minimesh/e2e/internal/image"
	"github.com/minimesh/minimesh/injector"
)

func main() {
	bin := flag.String("bin", "bin", "directory of minimesh-proxy and minimesh (`make build`)")
	ref := flag.String("ref", "minimesh.local/minimesh:dev", "the image's name, fully qualified")
	out := flag.String("out", "dist/minimesh-image.tar", "the OCI layout tar to write")
	initRef := flag.String("init-ref", "", "the init image's name, fully qualified (default: the injector's default for -ref, its repository + -init, same tag)")
	initOut := flag.String("init-out", "", "the init image's OCI layout tar to write (empty: none)")
	flag.Parse()
	if err := run(*bin, *ref, *out); err != nil {
		fmt.Fprintln(os.Stderr, "minimesh-image:", err)
		os.Exit(1)
	}
	if *initOut == "" {
		return
	}
	if *initRef == "" {
		var err error
		if *initRef, err = injector.DefaultInitImage(*ref); err != nil {
			fmt.Fprintln(os.Stderr, "minimesh-image: -init-ref:", err)
			os.Exit(2)
		}
	}
	if err := runInit(*bin, *initRef, *initOut); err != nil {
		fmt.Fprintln(os.Stderr, "minimesh-image:", err)
		os.Exit(1)
	}
}

func run(bin, ref, out string) error {
	img := image.Minimesh(bin, ref)
	if _, err := os.Stat(image.CACerts); err != nil {
		fmt.Fprintf(os.Stderr, "minimesh-image: no %s on this host: the image holds no CA certificates\n", image.CACerts)
	}
	return write(img, out)
}

func runInit(bin, ref, out string) error {
	img, err := image.MinimeshInit(bin, ref)
	if err != nil {
		return fmt.Errorf("the init image: %w", err)
	}
	if host, want, err := image.HostRelease(); err != nil || host != want {
		fmt.Fprintf(os.Stderr, "minimesh-image: this host is not Debian %s (%q, %v): the init image holds its iptables, not the Dockerfile's\n", want, host, err)
	}
	return write(img, out)
}

// write writes img's OCI layout tar to out: beside it first, then renamed,
// so that an interrupted run leaves no half-written tar at out.
func write(img image.Image, out string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
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
	size := int64(0)
	if fi, err := os.Stat(out); err == nil {
		size = fi.Size()
	}
	fmt.Printf("image %s\nwrote %s (%.1f MB; load it: ctr -n k8s.io images import %s)\n", img.Ref, out, float64(size)/1e6, out)
	return nil
}

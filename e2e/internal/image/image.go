// Package image builds container images without Docker or a registry: an
// OCI image layout, written as a tar stream, of one uncompressed layer that
// holds static binaries, which `ctr images import` loads into containerd.
// The one-node cluster of e2e/internal/cluster runs pods from such images
// with imagePullPolicy Never.
package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"
)

// File is one file, directory or symbolic link of the image's only layer.
// Files are owned by UID:GID (root unless set); missing parent directories
// are added, root's, 0755.
type File struct {
	Name     string // absolute path in the image, e.g. /minimesh-proxy
	Src      string // file to copy from; or
	Data     []byte // the content itself
	Mode     int64  // 0: 0755
	Dir      bool   // a directory (Src and Data unused)
	Link     string // a symbolic link to this target, as the link holds it (Src, Data and Mode unused)
	UID, GID int
}

// Image is an image to build.
type Image struct {
	// Ref names the image in containerd, fully qualified
	// (minimesh.local/minimesh:e2e).
	Ref        string
	Files      []File
	User       string // e.g. "65532:65532"; empty: root
	Entrypoint []string
	Cmd        []string
	Env        []string // PATH=/ unless it sets PATH
	WorkingDir string   // empty: the runtime's default, /
}

// epoch keeps the layers reproducible.
var epoch = time.Unix(0, 0)

const (
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type blob struct {
	digest string
	data   []byte
}

func newBlob(b []byte) blob {
	sum := sha256.Sum256(b)
	return blob{digest: "sha256:" + hex.EncodeToString(sum[:]), data: b}
}

// layer is the uncompressed tar of the image's files, parents first.
func layer(files []File) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{"/": true}
	links := map[string]bool{}
	sorted := append([]File(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for i, f := range sorted {
		if !path.IsAbs(f.Name) || path.Clean(f.Name) != f.Name {
			return nil, fmt.Errorf("image file %q: want a clean absolute path", f.Name)
		}
		if i > 0 && sorted[i-1].Name == f.Name {
			return nil, fmt.Errorf("image file %s: twice", f.Name)
		}
		var parents []string
		for d := path.Dir(f.Name); !dirs[d]; d = path.Dir(d) {
			if links[d] {
				// The runtime would follow the link, or fail: put the
				// file where the link points.
				return nil, fmt.Errorf("image file %s: %s is a symbolic link", f.Name, d)
			}
			parents = append([]string{d}, parents...)
			dirs[d] = true
		}
		for _, d := range parents {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: epoch}); err != nil {
				return nil, err
			}
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o755
		}
		if f.Link != "" {
			links[f.Name] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: f.Name[1:], Linkname: f.Link, Mode: 0o777, Uid: f.UID, Gid: f.GID, ModTime: epoch}); err != nil {
				return nil, err
			}
			continue
		}
		if f.Dir {
			dirs[f.Name] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: f.Name[1:] + "/", Mode: mode, Uid: f.UID, Gid: f.GID, ModTime: epoch}); err != nil {
				return nil, err
			}
			continue
		}
		data := f.Data
		if f.Src != "" {
			var err error
			if data, err = os.ReadFile(f.Src); err != nil {
				return nil, err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.Name[1:], Mode: mode, Uid: f.UID, Gid: f.GID, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteOCI writes an OCI image layout holding imgs as a tar stream to w.
// Each image's manifest is named by its Ref in the annotations that ctr
// reads (io.containerd.image.name) and that other tools read
// (org.opencontainers.image.ref.name).
func WriteOCI(w io.Writer, imgs ...Image) error {
	var blobs []blob
	var manifests []descriptor
	for _, img := range imgs {
		l, err := layer(img.Files)
		if err != nil {
			return fmt.Errorf("image %s: %w", img.Ref, err)
		}
		lb := newBlob(l)
		env := img.Env
		if !slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
			env = append([]string{"PATH=/"}, env...)
		}
		config := map[string]any{
			"User":       img.User,
			"Entrypoint": img.Entrypoint,
			"Cmd":        img.Cmd,
			"Env":        env,
		}
		if img.WorkingDir != "" {
			config["WorkingDir"] = img.WorkingDir
		}
		cfg := map[string]any{
			"created":      epoch.UTC().Format(time.RFC3339),
			"architecture": runtime.GOARCH,
			"os":           "linux",
			"config":       config,
			"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{lb.digest}},
		}
		cb, err := json.Marshal(cfg)
		if err != nil {
			return err
		}
		cfgBlob := newBlob(cb)
		man := map[string]any{
			"schemaVersion": 2,
			"mediaType":     mediaManifest,
			"config":        descriptor{MediaType: mediaConfig, Digest: cfgBlob.digest, Size: int64(len(cb))},
			"layers":        []descriptor{{MediaType: mediaLayer, Digest: lb.digest, Size: int64(len(l))}},
		}
		mb, err := json.Marshal(man)
		if err != nil {
			return err
		}
		manBlob := newBlob(mb)
		blobs = append(blobs, lb, cfgBlob, manBlob)
		manifests = append(manifests, descriptor{
			MediaType: mediaManifest, Digest: manBlob.digest, Size: int64(len(mb)),
			Annotations: map[string]string{
				"io.containerd.image.name":          img.Ref,
				"org.opencontainers.image.ref.name": img.Ref,
			},
			Platform: &platform{Architecture: runtime.GOARCH, OS: "linux"},
		})
	}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mediaIndex, "manifests": manifests})
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	put := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, b := range blobs {
		if seen[b.digest] {
			continue
		}
		seen[b.digest] = true
		if err := put("blobs/sha256/"+b.digest[len("sha256:"):], b.data); err != nil {
			return err
		}
	}
	if err := put("index.json", index); err != nil {
		return err
	}
	return tw.Close()
}

// Import loads imgs into containerd at address (its gRPC socket) in
// namespace ns (k8s.io for Kubernetes' CRI) with ctr, and unpacks them.
func Import(ctx context.Context, ctr, address, ns string, imgs ...Image) error {
	var buf bytes.Buffer
	if err := WriteOCI(&buf, imgs...); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, ctr, "--address", address, "--namespace", ns, "images", "import", "-")
	cmd.Stdin = &buf
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import: %w: %s", err, out)
	}
	return nil
}

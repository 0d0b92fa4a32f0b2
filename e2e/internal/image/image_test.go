package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"testing"
)

// TestWriteOCI checks the layout that ctr imports: index.json names each
// image, and every blob is stored under its digest.
func TestWriteOCI(t *testing.T) {
	var buf bytes.Buffer
	img := Image{Ref: "minimesh.local/x:1", User: "65532:65532", Entrypoint: []string{"/bin/x"},
		Files: []File{{Name: "/bin/x", Data: []byte("#!x")}}}
	if err := WriteOCI(&buf, img); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = b
	}
	for name, b := range files {
		if len(name) > len("blobs/sha256/") && name[:len("blobs/sha256/")] == "blobs/sha256/" {
			sum := sha256.Sum256(b)
			if hex.EncodeToString(sum[:]) != name[len("blobs/sha256/"):] {
				t.Errorf("%s: content does not match its digest", name)
			}
		}
	}
	var index struct {
		Manifests []descriptor
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1 || index.Manifests[0].Annotations["io.containerd.image.name"] != img.Ref {
		t.Fatalf("index.json: %s", files["index.json"])
	}
	man := files["blobs/sha256/"+index.Manifests[0].Digest[len("sha256:"):]]
	var m struct {
		Config descriptor
		Layers []descriptor
	}
	if err := json.Unmarshal(man, &m); err != nil || len(m.Layers) != 1 {
		t.Fatalf("manifest %s: %v", man, err)
	}
	var cfg struct {
		Config struct{ User string }
	}
	if err := json.Unmarshal(files["blobs/sha256/"+m.Config.Digest[len("sha256:"):]], &cfg); err != nil || cfg.Config.User != "65532:65532" {
		t.Fatalf("config: %+v, %v", cfg, err)
	}
	lr := tar.NewReader(bytes.NewReader(files["blobs/sha256/"+m.Layers[0].Digest[len("sha256:"):]]))
	var names []string
	for {
		h, err := lr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	if len(names) != 2 || names[0] != "bin/" || names[1] != "bin/x" {
		t.Fatalf("layer holds %v, want [bin/ bin/x]", names)
	}
}

// TestLayerLinks: symbolic links are written as links, and a file under a
// link, or a path twice, is refused.
func TestLayerLinks(t *testing.T) {
	l, err := layer([]File{{Name: "/usr/sbin/x-save", Link: "x-multi"}, {Name: "/usr/sbin/x-multi", Data: []byte("x")}, {Name: "/lib", Link: "usr/lib"}})
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(l))
	links := map[string]string{}
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if h.Typeflag == tar.TypeSymlink {
			links[h.Name] = h.Linkname
		}
	}
	if len(links) != 2 || links["usr/sbin/x-save"] != "x-multi" || links["lib"] != "usr/lib" {
		t.Errorf("links %v", links)
	}
	for _, bad := range [][]File{
		{{Name: "/lib", Link: "usr/lib"}, {Name: "/lib/libc.so.6", Data: []byte("x")}},
		{{Name: "/x", Data: []byte("1")}, {Name: "/x", Data: []byte("2")}},
		{{Name: "/a/../x", Data: []byte("1")}},
	} {
		if _, err := layer(bad); err == nil {
			t.Errorf("layer(%+v): no error", bad)
		}
	}
}

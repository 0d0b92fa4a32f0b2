package injector

import (
	"strings"
	"testing"
)

// Digests of the form the kubelet accepts.
var (
	digest1 = "sha256:" + strings.Repeat("1", 64)
	digest2 = "sha256:" + strings.Repeat("2", 64)
)

// TestConfigImageRef: proxy.image and proxy.initImage are refused unless
// the kubelet could pull them. The API server refuses only white space at
// the ends, in every injected pod; the kubelet the rest, as
// InvalidImageName, in every injected pod too.
func TestConfigImageRef(t *testing.T) {
	long := "reg.example/" + strings.Repeat("a", 255) // the longest repository path
	tests := []struct {
		image, initImage string
		want             string // "" valid, else a part of the error
	}{
		{"ghcr.io/minimesh/minimesh:v1", "", ""},
		{"minimesh", "", ""},
		{"minimesh:latest", "", ""},
		{"registry:5000/mesh/minimesh:1.2.3", "", ""},
		{"localhost/minimesh:e2e", "", ""},
		{"[fd00::1]:5000/minimesh:v1", "", ""},
		{"Registry.Example/mesh/mini_mesh__x--y.z:V1_rc.2-a", "", ""},
		{"reg/mm:1@" + digest1, "reg/mm-init@" + digest2, ""},
		{"reg/mm@sha512:" + strings.Repeat("a", 128), "reg/mm-init@sha384:" + strings.Repeat("b", 96), ""},
		{"ghcr.io/minimesh/minimesh:v1", "ghcr.io/minimesh/minimesh-init:v1", ""},

		{" ghcr.io/minimesh/minimesh:v1", "", `proxy.image: " ghcr.io/minimesh/minimesh:v1": contains white space`},
		{"ghcr.io/minimesh/minimesh:v1\n", "", `proxy.image: "ghcr.io/minimesh/minimesh:v1\n": contains white space`},
		{"ghcr.io/minimesh/ minimesh:v1", "", "proxy.image: \"ghcr.io/minimesh/ minimesh:v1\": contains white space"},
		{"ghcr.io/MiniMesh/minimesh:v1", "", `proxy.image: "ghcr.io/MiniMesh/minimesh:v1": repository "MiniMesh/minimesh": want lower-case`},
		{"Minimesh:v1", "", `proxy.image: "Minimesh:v1": repository "Minimesh"`},
		{"ghcr.io/minimesh/minimesh-:v1", "", `repository "minimesh/minimesh-"`},
		{"ghcr.io//minimesh:v1", "", `repository "/minimesh"`},
		{"ghcr.io/minimesh/minimesh:", "", `proxy.image: "ghcr.io/minimesh/minimesh:": tag ""`},
		{"ghcr.io/minimesh/minimesh:-v1", "", `tag "-v1"`},
		{"ghcr.io/minimesh/minimesh:" + strings.Repeat("1", 129), "", `tag "111`},
		{"ghcr.io/minimesh/minimesh:v1+build", "", `tag "v1+build"`},
		{":v1", "", `proxy.image: ":v1": no repository`},
		{"-reg.example/minimesh:v1", "", `registry "-reg.example"`},
		{"reg.example:http/minimesh:v1", "", `registry "reg.example:http"`},
		{long, "reg/mm-init:v1", ""},
		{long + "a", "reg/mm-init:v1", `proxy.image: "reg.example/aaa`},
		{long + "a", "reg/mm-init:v1", `: repository path of 256 bytes, more than 255`},
		// The default init image appends -init, past the limit.
		{long, "", `proxy.initImage: must be set: proxy.image "reg.example/aaa`},
		{long, "", `(272 bytes): repository path of 260 bytes, more than 255`},
		// Docker Hub's official images are library/NAME.
		{strings.Repeat("a", 247), "reg/mm-init:v1", ""},
		{strings.Repeat("a", 248), "reg/mm-init:v1", `repository path of 256 bytes`},
		{"docker.io/" + strings.Repeat("a", 248), "reg/mm-init:v1", `repository path of 256 bytes`},
		{strings.Repeat("a", 64), "reg/mm-init:v1", `64 hex digits name an image ID`},
		{"reg/mm@sha256:0123", "reg/mm-init:v1", `proxy.image: "reg/mm@sha256:0123": digest "sha256:0123"`},
		{"reg/mm@sha256:" + strings.Repeat("A", 64), "reg/mm-init:v1", `digest "sha256:AAA`},
		{"reg/mm@md5:" + strings.Repeat("a", 32), "reg/mm-init:v1", `digest "md5:`},
		{"reg/mm@" + digest1 + "@" + digest2, "reg/mm-init:v1", `digest "sha256:111`},
		{"reg/mm@" + digest1, "", "proxy.initImage: must be set: proxy.image reg/mm@" + digest1 + " is pinned by digest"},

		{"ghcr.io/minimesh/minimesh:v1", "ghcr.io/minimesh/minimesh-init:v1 ", `proxy.initImage: "ghcr.io/minimesh/minimesh-init:v1 ": contains white space`},
		{"ghcr.io/minimesh/minimesh:v1", "ghcr.io/minimesh/Init:v1", `proxy.initImage: "ghcr.io/minimesh/Init:v1": repository "minimesh/Init"`},
	}
	for _, tt := range tests {
		cfg := DefaultConfig()
		cfg.Proxy.Image, cfg.Proxy.InitImage = tt.image, tt.initImage
		err := cfg.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("image %q, initImage %q: %v", tt.image, tt.initImage, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("image %q, initImage %q: %v, want an error containing %q", tt.image, tt.initImage, err, tt.want)
		}
	}
}

// TestConfigDefaultImage: the images of the default config pass, whatever
// version the binary was built as.
func TestConfigDefaultImage(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

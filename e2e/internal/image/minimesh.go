package image

import (
	"os"
	"path/filepath"
)

// MinimeshBase is the base of the Dockerfile's final stage. Minimesh
// mirrors what of it matters: its configuration (Env, WorkingDir), the
// users and groups of /etc/passwd and /etc/group, /tmp, the home
// directory, and the CA certificates. Not its tzdata (neither binary loads
// a time zone) nor its dpkg status or os-release (package metadata for
// scanners, which would describe Debian packages this image does not
// hold).
const MinimeshBase = "gcr.io/distroless/static-debian12:nonroot"

// CACerts is where Debian, and distroless, keep the CA bundle; Go's
// crypto/x509 reads it there, or where SSL_CERT_FILE says.
const CACerts = "/etc/ssl/certs/ca-certificates.crt"

// hostCACerts is the host's bundle that Minimesh copies (a variable for
// the tests).
var hostCACerts = CACerts

// minimeshBaseEnv and minimeshBaseWorkDir are MinimeshBase's config.
var (
	minimeshBaseEnv = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"SSL_CERT_FILE=" + CACerts,
	}
	minimeshBaseWorkDir = "/home/nonroot"
)

const (
	etcPasswd = "root:x:0:0:root:/root:/sbin/nologin\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n" +
		"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	etcGroup = "root:x:0:\n" +
		"nobody:x:65534:\n" +
		"nonroot:x:65532:\n"
)

// Minimesh is minimesh's image, named ref, as the Dockerfile builds it,
// from the binaries of `make build` in binDir: /minimesh-proxy (the
// sidecar) and /minimesh (injector, control plane and CLI), 0755, run as
// 65532:65532 (nonroot), no entrypoint, command /minimesh-proxy run, and
// the parts of MinimeshBase that matter. The Dockerfile stays for those
// with Docker; dockerfile_test.go checks that both describe one image.
//
// The CA bundle is the host's (Debian's ca-certificates, as distroless's),
// if it has one: nothing in minimesh reads the system roots today (xDS and
// OTLP are plaintext, the webhook serves its own certificate, client-go
// trusts the service account's CA), but an image that behaves like the
// Docker one keeps working when one of them turns to TLS, or when the CLI
// is pointed at an API server with a public certificate.
func Minimesh(binDir, ref string) Image {
	img := Image{
		Ref:        ref,
		User:       "65532:65532",
		Cmd:        []string{"/minimesh-proxy", "run"},
		Env:        append([]string(nil), minimeshBaseEnv...),
		WorkingDir: minimeshBaseWorkDir,
		Files: []File{
			{Name: "/minimesh-proxy", Src: filepath.Join(binDir, "minimesh-proxy"), Mode: 0o755},
			{Name: "/minimesh", Src: filepath.Join(binDir, "minimesh"), Mode: 0o755},
		},
	}
	img.Files = append(img.Files, minimeshBaseFiles()...)
	return img
}

// minimeshBaseFiles are the files of MinimeshBase that Minimesh holds.
func minimeshBaseFiles() []File {
	files := []File{
		{Name: "/etc/passwd", Data: []byte(etcPasswd), Mode: 0o644},
		{Name: "/etc/group", Data: []byte(etcGroup), Mode: 0o644},
		{Name: "/home/nonroot", Dir: true, Mode: 0o700, UID: 65532, GID: 65532},
		{Name: "/tmp", Dir: true, Mode: 0o1777},
	}
	if fi, err := os.Stat(hostCACerts); err == nil && fi.Mode().IsRegular() {
		files = append(files, File{Name: CACerts, Src: hostCACerts, Mode: 0o644})
	}
	return files
}

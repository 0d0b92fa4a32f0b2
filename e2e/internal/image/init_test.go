package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
)

// minimeshInit is MinimeshInit of bin, or Unmet without Debian's iptables.
func minimeshInit(t *testing.T, bin string) Image {
	t.Helper()
	img, err := MinimeshInit(bin, "minimesh.local/minimesh-init:t")
	if err != nil {
		if _, e := os.Lstat("/usr/sbin/iptables-nft-save"); e != nil {
			proc.Unmet(t, "no Debian iptables here (scripts/tools.sh installs it): %v", err)
		}
		t.Fatal(err)
	}
	return img
}

// TestMinimeshInitIsTheDockerfiles checks that the Dockerfile's init stage
// and MinimeshInit describe one image: base, entrypoint, user and
// environment, the binary from the Makefile's build, the package.
func TestMinimeshInitIsTheDockerfiles(t *testing.T) {
	dockerfile, makefile := readRepoFile(t, "Dockerfile"), readRepoFile(t, "Makefile")
	d, err := readDockerfileTarget(dockerfile, "init")
	if err != nil {
		t.Fatal(err)
	}
	want := ociConfig{Entrypoint: []string{"/minimesh-proxy", "init"}, Env: minimeshInitEnv}
	if !reflect.DeepEqual(nilIfEmpty(d.config), nilIfEmpty(want)) {
		t.Errorf("the init stage's config is %+v, want %+v (root, entrypoint minimesh-proxy init)", d.config, want)
	}
	if len(d.files) != 1 || d.files[0].name != "/minimesh-proxy" {
		t.Errorf("the init stage copies %+v, want /minimesh-proxy only", d.files)
	}
	bin := "/some/bin"
	img := minimeshInit(t, bin)
	for _, m := range initMismatches(dockerfile, makefile, img, bin) {
		t.Error(m)
	}
	// The main image is still the final stage: docker build without
	// --target builds the sidecar's.
	if d, err := readDockerfile(dockerfile); err != nil || d.from != MinimeshBase {
		t.Errorf("the final stage builds on %s (%v), want %s", d.from, err, MinimeshBase)
	}
}

// TestInitMismatchesFail changes one side at a time and expects the
// comparison to notice.
func TestInitMismatchesFail(t *testing.T) {
	dockerfile, makefile := readRepoFile(t, "Dockerfile"), readRepoFile(t, "Makefile")
	bin := "/some/bin"
	good := minimeshInit(t, bin)
	if m := initMismatches(dockerfile, makefile, good, bin); len(m) != 0 {
		t.Fatalf("the real ones disagree: %v", m)
	}
	mustReplace := func(s, old, new string) string {
		t.Helper()
		if !strings.Contains(s, old) {
			t.Fatalf("%q not found", old)
		}
		return strings.Replace(s, old, new, 1)
	}
	entry := `ENTRYPOINT ["/minimesh-proxy", "init"]`
	dockerEdits := map[string]string{
		"entrypoint":    mustReplace(dockerfile, entry, `ENTRYPOINT ["/minimesh-proxy"]`),
		"cmd":           mustReplace(dockerfile, entry, entry+"\n"+`CMD ["--dry-run"]`),
		"user":          mustReplace(dockerfile, entry, "USER 65532\n"+entry),
		"env":           mustReplace(dockerfile, entry, "ENV XTABLES_LIBDIR=/x\n"+entry),
		"base":          mustReplace(dockerfile, "debian:bookworm-slim AS init", "debian:trixie-slim AS init"),
		"package":       mustReplace(dockerfile, "--no-install-recommends iptables", "--no-install-recommends iptables nftables"),
		"recommends":    mustReplace(dockerfile, "--no-install-recommends iptables", "iptables"),
		"dst":           mustReplace(dockerfile, "/out/minimesh-proxy /minimesh-proxy\nENTRYPOINT", "/out/minimesh-proxy /usr/bin/minimesh-proxy\nENTRYPOINT"),
		"second binary": mustReplace(dockerfile, entry, "COPY --from=build /out/minimesh /minimesh\n"+entry),
		"trimpath":      mustReplace(dockerfile, "go build -trimpath", "go build"),
	}
	for name, df := range dockerEdits {
		if m := initMismatches(df, makefile, good, bin); len(m) == 0 {
			t.Errorf("Dockerfile %s changed: no mismatch found", name)
		}
	}
	goEdits := map[string]func(*Image){
		"entrypoint": func(i *Image) { i.Entrypoint = []string{"/minimesh-proxy"} },
		"cmd":        func(i *Image) { i.Cmd = []string{"init"} },
		"user":       func(i *Image) { i.User = "65532" },
		"env":        func(i *Image) { i.Env = nil },
		"binary gone": func(i *Image) {
			i.Files = slices.DeleteFunc(i.Files, func(f File) bool { return f.Name == "/minimesh-proxy" })
		},
		"src": func(i *Image) { i.Files[0].Src = filepath.Join(bin, "minimesh") },
	}
	for name, edit := range goEdits {
		img := good
		img.Files = slices.Clone(good.Files)
		img.Env = slices.Clone(good.Env)
		edit(&img)
		if m := initMismatches(dockerfile, makefile, img, bin); len(m) == 0 {
			t.Errorf("MinimeshInit %s changed: no mismatch found", name)
		}
	}
}

// TestMinimeshInitFilesAreDebians checks, with this host's dpkg, that
// every file MinimeshInit takes from the host is one the Dockerfile's
// init stage holds too (a file of the package it installs, of their
// dependencies, or of Debian's essential packages, which every Debian
// image holds), and that it holds every program minimesh-proxy init runs
// and every xtables extension of the package, as the package ships them.
func TestMinimeshInitFilesAreDebians(t *testing.T) {
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		proc.Unmet(t, "no dpkg-query: %v", err)
	}
	if host, want, err := HostRelease(); err != nil || host != want {
		proc.Unmet(t, "this host is Debian %q (%v), the init stage's base is %s: the files would differ", host, err, want)
	}
	bin := t.TempDir()
	img := minimeshInit(t, bin)
	byName := map[string]File{}
	for _, f := range img.Files {
		byName[f.Name] = f
	}

	allowed := debianClosure(t, MinimeshInitPackage)
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Package} ${Essential}\n").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if p, ok := strings.CutSuffix(line, " yes"); ok {
			allowed[p] = true
		}
	}
	var names []string
	for _, f := range img.Files {
		if !strings.HasPrefix(f.Src, bin) { // not the build's
			names = append(names, f.Name)
		}
	}
	owners := dpkgOwners(t, names)
	for _, f := range img.Files {
		if strings.HasPrefix(f.Src, bin) {
			continue
		}
		if !slices.ContainsFunc(owners[f.Name], func(o string) bool { return allowed[o] }) {
			t.Errorf("%s: from %q, which the init stage does not install", f.Name, owners[f.Name])
		}
		// A merged-usr Debian's top-level links, as debian:bookworm-slim has them.
		if f.Name == "/lib" || f.Name == "/lib64" {
			if f.Link != "usr"+f.Name {
				t.Errorf("%s links to %q, want usr%s (merged /usr)", f.Name, f.Link, f.Name)
			}
		}
	}

	listed, err := exec.Command("dpkg-query", "-L", MinimeshInitPackage).Output()
	if err != nil {
		t.Fatal(err)
	}
	files := strings.Split(strings.TrimSpace(string(listed)), "\n")
	for _, name := range InitPrograms() {
		p := path.Join(sbinDir, name)
		if !slices.Contains(files, p) {
			t.Errorf("%s: not in Debian's %s", p, MinimeshInitPackage)
		}
		target, _ := os.Readlink(p)
		if f, ok := byName[p]; !ok || f.Link == "" || f.Link != target {
			t.Errorf("%s: %+v in the image, a link to %s in Debian's %s", p, f, target, MinimeshInitPackage)
		} else if _, ok := byName[path.Join(sbinDir, f.Link)]; !ok {
			t.Errorf("%s links to %s, which the image lacks", p, f.Link)
		}
	}
	ext := regexp.MustCompile(`^/usr/lib/[^/]+/xtables/[^/]+\.so$`)
	n := 0
	for _, p := range files {
		if ext.MatchString(p) {
			n++
			if _, ok := byName[p]; !ok {
				t.Errorf("%s: Debian's extension is not in the image", p)
			}
		}
	}
	for _, want := range []string{"libxt_standard.so", "libxt_tcp.so", "libxt_owner.so", "libxt_REDIRECT.so"} {
		if !slices.ContainsFunc(img.Files, func(f File) bool { return path.Base(f.Name) == want }) {
			t.Errorf("the rules' extension %s is not in the image", want)
		}
	}
	t.Logf("%d files, %d of them xtables extensions", len(img.Files), n)
}

// debianClosure is pkg and every package it depends on, transitively.
func debianClosure(t *testing.T, pkg string) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	todo := []string{pkg}
	for len(todo) > 0 {
		p := todo[0]
		todo = todo[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		out, err := exec.Command("dpkg-query", "-W", "-f", "${Depends}, ${Pre-Depends}", p).Output()
		if err != nil {
			continue // a virtual package or alternative not installed
		}
		for _, dep := range strings.Split(string(out), ",") {
			for _, alt := range strings.Split(dep, "|") {
				name, _, _ := strings.Cut(strings.TrimSpace(alt), " ")
				name, _, _ = strings.Cut(name, ":")
				if name != "" {
					todo = append(todo, name)
				}
			}
		}
	}
	return seen
}

// dpkgOwners are the packages that own each path, found as it is or
// without /usr (dpkg's database predates merged /usr), architecture
// qualifiers dropped; one dpkg-query per try, not per path.
func dpkgOwners(t *testing.T, paths []string) map[string][]string {
	t.Helper()
	owners := map[string][]string{}
	query := func(qs map[string]string) { // dpkg's path -> ours
		args := []string{"-S"}
		for q := range qs {
			args = append(args, q)
		}
		out, _ := exec.Command("dpkg-query", args...).Output() // exit 1 when one is not found
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			pkgs, file, ok := strings.Cut(line, ": ")
			p, mine := qs[file]
			if !ok || !mine {
				continue // a diversion, or a longer path matching the pattern
			}
			for _, o := range strings.Split(pkgs, ", ") {
				o, _, _ = strings.Cut(o, ":")
				owners[p] = append(owners[p], o)
			}
		}
	}
	asIs := map[string]string{}
	for _, p := range paths {
		asIs[p] = p
	}
	query(asIs)
	without := map[string]string{}
	for _, p := range paths {
		if q, ok := strings.CutPrefix(p, "/usr/"); ok && owners[p] == nil {
			without["/"+q] = p
		}
	}
	if len(without) > 0 {
		query(without)
	}
	return owners
}

// TestMinimeshInitRuns runs the image's entrypoint as a container would:
// its layer unpacked, in a new network and mount namespace with /proc,
// chrooted into it, as root; `minimesh-proxy init` detects a back-end,
// applies its rules with each, and reads them back (no cluster needed).
func TestMinimeshInitRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		proc.Unmet(t, "needs root (network namespaces, chroot, iptables)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		proc.Unmet(t, "no unshare (util-linux): %v", err)
	}
	bin, err := filepath.Abs(filepath.Join("..", "..", "..", "bin"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(bin, "minimesh-proxy")); err != nil {
		proc.Unmet(t, "no bin/minimesh-proxy (make build): %v", err)
	}
	img := minimeshInit(t, bin)
	l, err := layer(img.Files)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the init image's layer: %.1f MB", float64(len(l))/1e6)
	root := t.TempDir()
	if err := untar(l, root); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "proc"), 0o555); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// The entrypoint, then its arguments, as the runtime would.
		sh := `mount -t proc proc "$1/proc" && exec chroot "$@"`
		argv := append([]string{"--net", "--mount", "--propagation", "private", "sh", "-c", sh, "sh", root}, img.Entrypoint...)
		cmd := exec.CommandContext(ctx, unshare, append(argv, args...)...)
		cmd.Env = append([]string{}, img.Env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, backend := range []string{"auto", "legacy", "nft"} {
		out, err := run("--backend="+backend, "--proxy-uid=15000", "--outbound-port=15001", "--ipv6=on")
		if err != nil {
			var exit *exec.ExitError
			if errors.As(err, &exit) && strings.Contains(out, "Operation not supported") {
				proc.Unmet(t, "the kernel lacks %s iptables: %s", backend, out)
			}
			t.Fatalf("--backend %s: %v\n%s", backend, err, out)
		}
		for _, want := range []string{"minimesh-proxy init: back-end ", "IPv4 rules in place", "IPv6 rules in place", "-A MINIMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001"} {
			if !strings.Contains(out, want) {
				t.Errorf("--backend %s: no %q in\n%s", backend, want, out)
			}
		}
		t.Logf("--backend %s: %s", backend, strings.SplitN(out, "\n", 2)[0])
	}
}

// untar unpacks a layer into dir: directories, files and symbolic links.
func untar(layer []byte, dir string) error {
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, os.FileMode(h.Mode).Perm()); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				return err
			}
			if err := os.WriteFile(p, b, os.FileMode(h.Mode).Perm()); err != nil {
				return err
			}
		default:
			return errors.New(h.Name + ": unexpected type")
		}
	}
}

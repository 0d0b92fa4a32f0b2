package image

import (
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/minimesh/minimesh/proxy/iptables"
)

// MinimeshInitBase is the base of the Dockerfile's init stage, and
// MinimeshInitPackage the Debian package it installs there (apt-get
// install --no-install-recommends): MinimeshInit copies that package's
// files from this host, which should run the same Debian release
// (HostRelease).
const (
	MinimeshInitBase    = "debian:bookworm-slim"
	MinimeshInitPackage = "iptables"
	minimeshInitRelease = "bookworm"
)

// minimeshInitEnv is MinimeshInitBase's environment.
var minimeshInitEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// hostRoot is the file system MinimeshInit copies Debian's files from (a
// variable for the tests).
var hostRoot = "/"

// sbinDir is where Debian's iptables package puts its programs.
const sbinDir = "/usr/sbin"

// InitPrograms are the names `minimesh-proxy init` runs (proxy/iptables),
// each back-end's save and restore program of each family, and the
// programs themselves (iptables-nft, ...), which it does not run but
// whoever overrides the entrypoint to look at the rules may:
// iptables-legacy, iptables-legacy-save, iptables-legacy-restore,
// ip6tables-legacy..., iptables-nft..., ip6tables-nft....
func InitPrograms() []string {
	var names []string
	for _, b := range []iptables.Backend{iptables.Legacy, iptables.NFT} {
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			names = append(names, strings.TrimSuffix(b.Save(f), "-save"), b.Save(f), b.Restore(f))
		}
	}
	return names
}

// initEtcFiles are the files of other packages that iptables reads at run
// time: the protocol names of -p (netbase, which iptables depends on;
// without it iptables falls back to its own short list).
var initEtcFiles = []string{"/etc/protocols"}

// MinimeshInit is the image of iptables interception's init container
// (the injector's minimesh-init, docs/interception.md), named ref, as the
// Dockerfile's init stage builds it, from `make build`'s minimesh-proxy in
// binDir and this host's Debian iptables: entrypoint /minimesh-proxy init,
// run as root (the injector adds NET_ADMIN and NET_RAW only), and
//
//   - xtables-legacy-multi and xtables-nft-multi, with the InitPrograms
//     names linking to them as Debian links them;
//   - every xtables extension Debian ships (/usr/lib/TRIPLE/xtables, 1.9
//     MB): the rules use four (standard, tcp, owner, REDIRECT), but
//     iptables-save must print whatever rules are already in the pod's
//     network namespace, and fails on a rule whose extension it lacks;
//   - the shared libraries those need (DT_NEEDED, transitively, and the
//     ELF interpreter), with the symbolic links that lead to them from
//     the paths the dynamic loader tries (/lib -> usr/lib on a merged-usr
//     Debian);
//   - /etc/protocols, and /run, where the injector mounts the emptyDir
//     that holds iptables' lock (/run/xtables.lock).
//
// No shell, no package manager: what the Dockerfile's Debian base adds
// beyond these, minimesh-proxy init never runs. The sidecar keeps its
// static image (Minimesh). dockerfile_test.go checks that both describe
// one image.
func MinimeshInit(binDir, ref string) (Image, error) {
	img := Image{
		Ref:        ref,
		Entrypoint: []string{"/minimesh-proxy", "init"},
		Env:        slices.Clone(minimeshInitEnv),
		Files: []File{
			{Name: "/minimesh-proxy", Src: filepath.Join(binDir, "minimesh-proxy"), Mode: 0o755},
			{Name: "/run", Dir: true, Mode: 0o755},
		},
	}
	extDir, err := xtablesDir()
	if err != nil {
		return Image{}, err
	}
	h := hostFiles{seen: map[string]bool{"/minimesh-proxy": true, "/run": true}, triple: path.Base(path.Dir(extDir))}
	var elves []string
	for _, name := range InitPrograms() {
		p := path.Join(sbinDir, name)
		target, err := os.Readlink(h.host(p))
		if err != nil {
			return Image{}, fmt.Errorf("%s: %w (scripts/tools.sh installs Debian's %s)", p, err, MinimeshInitPackage)
		}
		if strings.Contains(target, "/") {
			return Image{}, fmt.Errorf("%s links to %s: want a program of %s, as Debian links them", p, target, sbinDir)
		}
		if err := h.add(p); err != nil {
			return Image{}, err
		}
		if multi := path.Join(sbinDir, target); !slices.Contains(elves, multi) {
			elves = append(elves, multi)
		}
	}
	exts, err := filepath.Glob(filepath.Join(h.host(extDir), "*.so"))
	if err != nil {
		return Image{}, err
	}
	for _, e := range exts {
		p := path.Join(extDir, filepath.Base(e))
		if err := h.add(p); err != nil {
			return Image{}, err
		}
		elves = append(elves, p)
	}
	// The libraries, breadth first: each ELF's interpreter and needed
	// libraries, then theirs.
	for i := 0; i < len(elves); i++ {
		needed, interp, err := elfNeeds(h.host(elves[i]))
		if err != nil {
			return Image{}, fmt.Errorf("%s: %w", elves[i], err)
		}
		if interp != "" {
			if err := h.add(interp); err != nil {
				return Image{}, fmt.Errorf("%s's interpreter: %w", elves[i], err)
			}
		}
		for _, lib := range needed {
			p, err := h.findLib(lib)
			if err != nil {
				return Image{}, fmt.Errorf("%s: %w", elves[i], err)
			}
			if h.seen[p] {
				continue
			}
			if err := h.add(p); err != nil {
				return Image{}, err
			}
			elves = append(elves, p)
		}
	}
	for _, p := range initEtcFiles {
		if err := h.add(p); err != nil {
			return Image{}, err
		}
	}
	img.Files = append(img.Files, h.files...)
	return img, nil
}

// HostRelease is the Debian release (VERSION_CODENAME) of the host whose
// files MinimeshInit copies, and the one MinimeshInitBase is; when they
// differ the image holds another iptables than the Dockerfile's.
func HostRelease() (host, want string, err error) {
	b, err := os.ReadFile(filepath.Join(hostRoot, "etc", "os-release"))
	if err != nil {
		return "", minimeshInitRelease, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VERSION_CODENAME="); ok {
			return strings.Trim(v, `"`), minimeshInitRelease, nil
		}
	}
	return "", minimeshInitRelease, errors.New("/etc/os-release names no VERSION_CODENAME")
}

// xtablesDir is Debian's directory of xtables extensions,
// /usr/lib/TRIPLE/xtables.
func xtablesDir() (string, error) {
	m, err := filepath.Glob(filepath.Join(hostRoot, "usr", "lib", "*", "xtables"))
	if err != nil {
		return "", err
	}
	if len(m) != 1 {
		return "", fmt.Errorf("want one /usr/lib/*/xtables (Debian's %s), found %d", MinimeshInitPackage, len(m))
	}
	rel, err := filepath.Rel(hostRoot, m[0])
	if err != nil {
		return "", err
	}
	return "/" + filepath.ToSlash(rel), nil
}

// elfNeeds is an ELF file's DT_NEEDED libraries and its interpreter
// (PT_INTERP, empty for a shared library).
func elfNeeds(file string) (needed []string, interp string, err error) {
	f, err := elf.Open(file)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	if needed, err = f.ImportedLibraries(); err != nil {
		return nil, "", err
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return nil, "", err
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	return needed, interp, nil
}

// hostFiles collects files of the host for the image, each at its path,
// with the symbolic links on the way.
type hostFiles struct {
	files  []File
	seen   map[string]bool
	triple string // Debian's multiarch name, x86_64-linux-gnu
}

func (h *hostFiles) host(p string) string { return filepath.Join(hostRoot, filepath.FromSlash(p)) }

// findLib is where the dynamic loader finds a library without
// /etc/ld.so.cache, which the image does not hold: Debian's glibc tries
// the multiarch directories, then /lib and /usr/lib.
func (h *hostFiles) findLib(soname string) (string, error) {
	for _, d := range []string{"/lib/" + h.triple, "/usr/lib/" + h.triple, "/lib", "/usr/lib"} {
		p := path.Join(d, soname)
		if _, err := os.Stat(h.host(p)); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("library %s not found", soname)
}

// add adds the file at p and every symbolic link on its way, as the host
// has them, so that p resolves in the image as it does here.
func (h *hostFiles) add(p string) error {
	for range 40 { // as the kernel's limit on links followed
		// The first symbolic link among p's directories, or p.
		cur := "/"
		rest := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
		for i, c := range rest {
			cur = path.Join(cur, c)
			fi, err := os.Lstat(h.host(cur))
			if err != nil {
				return err
			}
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(h.host(cur))
				if err != nil {
					return err
				}
				if !h.seen[cur] {
					h.seen[cur] = true
					h.files = append(h.files, File{Name: cur, Link: target})
				}
				if !path.IsAbs(target) {
					target = path.Join(path.Dir(cur), target)
				}
				p = path.Join(append([]string{target}, rest[i+1:]...)...)
			case i < len(rest)-1:
				if !fi.IsDir() {
					return fmt.Errorf("%s: %s is not a directory", p, cur)
				}
				continue
			case fi.Mode().IsRegular():
				if !h.seen[cur] {
					h.seen[cur] = true
					h.files = append(h.files, File{Name: cur, Src: h.host(cur), Mode: int64(fi.Mode().Perm())})
				}
				return nil
			default:
				return fmt.Errorf("%s: not a regular file (%s)", cur, fi.Mode())
			}
			break
		}
	}
	return fmt.Errorf("%s: too many symbolic links", p)
}

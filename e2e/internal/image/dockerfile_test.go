package image

// The Dockerfile (for those with Docker) and Minimesh (`make image`, the
// e2e cluster) describe one image. These tests read the Dockerfile's
// final stage and its build stage, and the Makefile's build target, with
// the small parsers below, and fail when either side changes alone: the
// files and where their binaries come from, the user, the entrypoint and
// command, the environment and working directory, and the go build flags.

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// baseConfigs is the configuration of the base images the Dockerfile may
// build on (`crane config IMAGE`); a base not here fails the test, since
// Minimesh would then mirror the wrong one.
var baseConfigs = map[string]ociConfig{
	"debian:bookworm-slim": {
		Cmd: []string{"bash"},
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	},
	"gcr.io/distroless/static-debian12:nonroot": {
		User: "65532",
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
		},
		WorkingDir: "/home/nonroot",
	},
}

type ociConfig struct {
	User       string
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
}

// --- the Dockerfile ---

type instruction struct {
	cmd  string // upper case
	args string
	line int
}

type stage struct {
	from, name string
	instrs     []instruction
}

// parseDockerfile splits a Dockerfile into stages of instructions,
// joining continuation lines and dropping comments.
func parseDockerfile(src string) ([]stage, error) {
	var stages []stage
	var cur strings.Builder
	start := 0
	flush := func() error {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return nil
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			var flags []string
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				flags, f = append(flags, f[0]), f[1:]
			}
			st := stage{}
			switch {
			case len(f) == 1:
				st.from = f[0]
			case len(f) == 3 && strings.EqualFold(f[1], "AS"):
				st.from, st.name = f[0], f[2]
			default:
				return fmt.Errorf("line %d: FROM %s", start, in.args)
			}
			if len(flags) > 0 {
				return fmt.Errorf("line %d: FROM flags %v: teach the test", start, flags)
			}
			stages = append(stages, st)
			return nil
		}
		if len(stages) == 0 {
			if in.cmd == "ARG" {
				return nil // before the first FROM
			}
			return fmt.Errorf("line %d: %s before FROM", start, in.cmd)
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
		return nil
	}
	for i, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue // a comment, also inside a continued instruction
		}
		if cur.Len() == 0 {
			if trimmed == "" {
				continue
			}
			start = i + 1
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return stages, nil
}

// words splits shell text into words and the operators && || ; |, with
// quotes removed. $VARIABLES stay as they are.
func words(s string) ([]string, error) {
	var out []string
	var w strings.Builder
	inWord := false
	end := func() {
		if inWord {
			out = append(out, w.String())
			w.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			end()
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unclosed ' in %q", s)
			}
			w.WriteString(s[i+1 : i+1+j])
			inWord = true
			i += j + 1
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.ContainsRune("\"\\$`", rune(s[i+1])) {
					i++
				}
				w.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unclosed \" in %q", s)
			}
			inWord = true
		case c == '\\' && i+1 < len(s):
			i++
			w.WriteByte(s[i])
			inWord = true
		case c == '&' || c == '|' || c == ';':
			end()
			op := string(c)
			if i+1 < len(s) && (s[i+1] == '&' || s[i+1] == '|') {
				op += string(s[i+1])
				i++
			}
			out = append(out, op)
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	end()
	return out, nil
}

// commandForm is an ENTRYPOINT's or CMD's argument: the exec form, a JSON
// array, or the shell form, which runs in /bin/sh -c.
func commandForm(args string) ([]string, error) {
	if strings.HasPrefix(args, "[") {
		var v []string
		if err := json.Unmarshal([]byte(args), &v); err != nil {
			return nil, fmt.Errorf("exec form %s: %w", args, err)
		}
		return v, nil
	}
	return []string{"/bin/sh", "-c", args}, nil
}

// goBuild is one `go build` of a RUN or a recipe line.
type goBuild struct {
	env   []string // the VAR=value before go, sorted
	flags []string // every flag but -o, as -name or -name=value, in order
	out   string
	pkg   string
}

// goBuilds finds the go builds of shell text (commands joined by && or ;).
// The version, ${VERSION} or $VERSION or the Makefile's, reads ${VERSION}.
func goBuilds(sh string) ([]goBuild, error) {
	ws, err := words(sh)
	if err != nil {
		return nil, err
	}
	var builds []goBuild
	for len(ws) > 0 {
		n := slices.IndexFunc(ws, func(w string) bool { return w == "&&" || w == ";" || w == "||" || w == "|" || w == "&" })
		if n < 0 {
			n = len(ws)
		}
		cmd := ws[:n]
		if n < len(ws) {
			n++
		}
		ws = ws[n:]
		var env []string
		for len(cmd) > 0 && regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`).MatchString(cmd[0]) {
			env, cmd = append(env, cmd[0]), cmd[1:]
		}
		if len(cmd) < 2 || cmd[0] != "go" || cmd[1] != "build" {
			continue
		}
		sort.Strings(env)
		b := goBuild{env: env}
		args := cmd[2:]
		for len(args) > 0 && strings.HasPrefix(args[0], "-") {
			name, val, hasVal := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
			args = args[1:]
			switch name {
			case "o", "ldflags", "gcflags", "asmflags", "tags", "mod", "modfile", "pgo", "p", "buildmode", "installsuffix", "overlay", "pkgdir", "toolexec", "covermode", "coverpkg":
				if !hasVal {
					if len(args) == 0 {
						return nil, fmt.Errorf("go build: -%s without a value", name)
					}
					val, args = args[0], args[1:]
				}
				if name == "o" {
					b.out = val
					continue
				}
				b.flags = append(b.flags, "-"+name+"="+normVersion(val))
			default:
				if hasVal {
					b.flags = append(b.flags, "-"+name+"="+val)
				} else {
					b.flags = append(b.flags, "-"+name)
				}
			}
		}
		if len(args) != 1 {
			return nil, fmt.Errorf("go build of %v: want one package", args)
		}
		b.pkg = args[0]
		builds = append(builds, b)
	}
	return builds, nil
}

func normVersion(s string) string {
	return regexp.MustCompile(`\$(\{VERSION\}|VERSION\b)`).ReplaceAllLiteralString(s, "${VERSION}")
}

// imageFile is a file of the image as the Dockerfile's final stage puts
// it: from pkg's build when it comes from the build stage.
type imageFile struct {
	name     string
	mode     int64
	uid, gid int
	pkg      string
}

// dockerImage is what the Dockerfile says of an image.
type dockerImage struct {
	from   string
	config ociConfig
	files  []imageFile
	builds []goBuild // the build stage's
	// The Debian packages its RUN installs, and whether without their
	// recommended packages.
	packages          []string
	withoutRecommends bool
}

// readRun reads a RUN of the image's stage: apt-get update, apt-get install
// of packages, and the removal of apt's lists; nothing else.
func (d *dockerImage) readRun(sh string) error {
	ws, err := words(sh)
	if err != nil {
		return err
	}
	for len(ws) > 0 {
		n := slices.Index(ws, "&&")
		if n < 0 {
			n = len(ws)
		}
		cmd := ws[:n]
		ws = ws[min(n+1, len(ws)):]
		switch {
		case slices.Equal(cmd, []string{"apt-get", "update"}):
		case slices.Equal(cmd, []string{"rm", "-rf", "/var/lib/apt/lists/*"}):
		case len(cmd) > 2 && cmd[0] == "apt-get" && cmd[1] == "install":
			for _, a := range cmd[2:] {
				switch {
				case a == "-y" || a == "--yes" || a == "-q" || a == "-qq":
				case a == "--no-install-recommends":
					d.withoutRecommends = true
				case strings.HasPrefix(a, "-"):
					return fmt.Errorf("apt-get install %s: teach the test", a)
				default:
					d.packages = append(d.packages, a)
				}
			}
		default:
			return fmt.Errorf("RUN %s: teach the test and MinimeshInit", strings.Join(cmd, " "))
		}
	}
	return nil
}

// readDockerfile reads the image of the Dockerfile's final stage, what
// `docker build` builds without --target.
func readDockerfile(src string) (dockerImage, error) { return readDockerfileTarget(src, "") }

// readDockerfileTarget reads the image of the stage named target (""
// the final one), what `docker build --target` builds.
func readDockerfileTarget(src, target string) (dockerImage, error) {
	var d dockerImage
	stages, err := parseDockerfile(src)
	if err != nil {
		return d, err
	}
	if len(stages) == 0 {
		return d, fmt.Errorf("no FROM")
	}
	final := stages[len(stages)-1]
	if target != "" {
		i := slices.IndexFunc(stages, func(st stage) bool { return st.name == target })
		if i < 0 {
			return d, fmt.Errorf("no stage %s", target)
		}
		final = stages[i]
	}
	byName := map[string]stage{}
	for _, st := range stages {
		if st.name != final.name || st.name == "" {
			byName[st.name] = st
		}
	}
	delete(byName, "")
	builds := map[string][]goBuild{} // by stage name
	for name, st := range byName {
		for _, in := range st.instrs {
			if in.cmd != "RUN" {
				continue
			}
			bs, err := goBuilds(in.args)
			if err != nil {
				return d, fmt.Errorf("line %d: %w", in.line, err)
			}
			builds[name] = append(builds[name], bs...)
		}
	}
	d.from = final.from
	base, ok := baseConfigs[final.from]
	if !ok {
		return d, fmt.Errorf("the final stage builds on %s, whose configuration the test does not know (baseConfigs), nor Minimesh mirrors (MinimeshBase)", final.from)
	}
	d.config = base
	d.config.Env = slices.Clone(base.Env)
	cmdSet := false
	for _, in := range final.instrs {
		switch in.cmd {
		case "USER":
			d.config.User = in.args
		case "WORKDIR":
			if path.IsAbs(in.args) {
				d.config.WorkingDir = path.Clean(in.args)
			} else {
				d.config.WorkingDir = path.Join(d.config.WorkingDir, in.args)
			}
		case "CMD":
			if d.config.Cmd, err = commandForm(in.args); err != nil {
				return d, fmt.Errorf("line %d: %w", in.line, err)
			}
			cmdSet = true
		case "ENTRYPOINT":
			if d.config.Entrypoint, err = commandForm(in.args); err != nil {
				return d, fmt.Errorf("line %d: %w", in.line, err)
			}
			if !cmdSet {
				d.config.Cmd = nil // ENTRYPOINT resets the base's CMD
			}
		case "ENV":
			ws, err := words(in.args)
			if err != nil {
				return d, fmt.Errorf("line %d: %w", in.line, err)
			}
			var kvs [][2]string
			if len(ws) > 0 && !strings.Contains(ws[0], "=") { // ENV KEY value...
				kvs = append(kvs, [2]string{ws[0], strings.Join(ws[1:], " ")})
			} else {
				for _, w := range ws {
					k, v, ok := strings.Cut(w, "=")
					if !ok {
						return d, fmt.Errorf("line %d: ENV %s", in.line, w)
					}
					kvs = append(kvs, [2]string{k, v})
				}
			}
			for _, kv := range kvs {
				d.config.Env = slices.DeleteFunc(d.config.Env, func(e string) bool { return strings.HasPrefix(e, kv[0]+"=") })
				d.config.Env = append(d.config.Env, kv[0]+"="+kv[1])
			}
		case "COPY":
			ws, err := words(in.args)
			if err != nil {
				return d, fmt.Errorf("line %d: %w", in.line, err)
			}
			from := ""
			uid, gid, mode := 0, 0, int64(-1)
			for len(ws) > 0 && strings.HasPrefix(ws[0], "--") {
				k, v, _ := strings.Cut(ws[0][2:], "=")
				ws = ws[1:]
				switch k {
				case "from":
					from = v
				case "chown":
					u, g, _ := strings.Cut(v, ":")
					if _, err := fmt.Sscan(u, &uid); err != nil {
						return d, fmt.Errorf("line %d: --chown=%s: want numeric ids", in.line, v)
					}
					gid = uid
					if g != "" {
						if _, err := fmt.Sscan(g, &gid); err != nil {
							return d, fmt.Errorf("line %d: --chown=%s: want numeric ids", in.line, v)
						}
					}
				case "chmod":
					if _, err := fmt.Sscanf(v, "%o", &mode); err != nil {
						return d, fmt.Errorf("line %d: --chmod=%s", in.line, v)
					}
				case "link":
				default:
					return d, fmt.Errorf("line %d: COPY --%s: teach the test", in.line, k)
				}
			}
			if len(ws) == 1 && strings.HasPrefix(ws[0], "[") {
				var v []string
				if err := json.Unmarshal([]byte(in.args[strings.Index(in.args, "["):]), &v); err != nil {
					return d, fmt.Errorf("line %d: %w", in.line, err)
				}
				ws = v
			}
			if len(ws) < 2 {
				return d, fmt.Errorf("line %d: COPY %s", in.line, in.args)
			}
			dst := ws[len(ws)-1]
			for _, src := range ws[:len(ws)-1] {
				f := imageFile{name: dst, mode: mode, uid: uid, gid: gid}
				if strings.HasSuffix(dst, "/") || len(ws) > 2 {
					f.name = path.Join(dst, path.Base(src))
				}
				if !path.IsAbs(f.name) {
					f.name = path.Join("/", d.config.WorkingDir, f.name)
				}
				if from == "" {
					return d, fmt.Errorf("line %d: COPY %s from the build context: Minimesh copies only built binaries", in.line, src)
				}
				i := slices.IndexFunc(builds[from], func(b goBuild) bool { return b.out == src })
				if i < 0 {
					return d, fmt.Errorf("line %d: COPY --from=%s %s: no go build -o %s in stage %s", in.line, from, src, src, from)
				}
				f.pkg = builds[from][i].pkg
				if f.mode < 0 {
					f.mode = 0o755 // go build's output, which COPY keeps
				}
				d.files = append(d.files, f)
			}
		case "RUN":
			// Debian packages, on a Debian base: MinimeshInit copies
			// their files from this host.
			if d.from != MinimeshInitBase {
				return d, fmt.Errorf("line %d: RUN in the image's stage: teach the test and Minimesh", in.line)
			}
			if err := d.readRun(in.args); err != nil {
				return d, fmt.Errorf("line %d: %w", in.line, err)
			}
		case "ARG":
		default:
			return d, fmt.Errorf("line %d: %s in the image's stage: teach the test and Minimesh", in.line, in.cmd)
		}
	}
	// The build stage(s) the final stage copies from.
	for _, bs := range builds {
		if slices.ContainsFunc(d.files, func(f imageFile) bool {
			return slices.ContainsFunc(bs, func(b goBuild) bool { return b.pkg == f.pkg })
		}) {
			d.builds = append(d.builds, bs...)
		}
	}
	return d, nil
}

// --- the Makefile ---

// makeBuilds are the go builds of the Makefile's build target, with its
// variables expanded ($(VERSION) reads ${VERSION}, $(GO) go, $(CURDIR) .).
func makeBuilds(src string) ([]goBuild, error) {
	vars := map[string]string{"VERSION": "${VERSION}", "GO": "go", "CURDIR": "."}
	assign := regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|\?=|=)\s*(.*)$`)
	var recipe []string
	inBuild := false
	for _, line := range strings.Split(src, "\n") {
		if inBuild {
			if strings.HasPrefix(line, "\t") {
				recipe = append(recipe, strings.TrimSpace(line))
				continue
			}
			inBuild = false
		}
		if m := assign.FindStringSubmatch(line); m != nil {
			if m[1] != "VERSION" && m[1] != "GO" && m[1] != "CURDIR" {
				vars[m[1]] = m[2]
			}
			continue
		}
		if strings.HasPrefix(line, "build:") {
			inBuild = true
		}
	}
	if len(recipe) == 0 {
		return nil, fmt.Errorf("no build target")
	}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	var expand func(s string, depth int) (string, error)
	expand = func(s string, depth int) (string, error) {
		if depth > 10 {
			return "", fmt.Errorf("recursive variables in %q", s)
		}
		var err error
		out := ref.ReplaceAllStringFunc(s, func(m string) string {
			name := m[2 : len(m)-1]
			v, ok := vars[name]
			if !ok {
				err = fmt.Errorf("$(%s) is not defined", name)
				return m
			}
			x, e := expand(v, depth+1)
			if e != nil {
				err = e
			}
			return x
		})
		return out, err
	}
	var builds []goBuild
	for _, line := range recipe {
		line = strings.TrimLeft(line, "@-+")
		x, err := expand(line, 0)
		if err != nil {
			return nil, err
		}
		bs, err := goBuilds(x)
		if err != nil {
			return nil, err
		}
		builds = append(builds, bs...)
	}
	return builds, nil
}

// --- the comparison ---

// mismatches lists where the Dockerfile and the Makefile's build, on one
// side, and img, Minimesh's image of binDir, on the other, disagree.
func mismatches(dockerfile, makefile string, img Image, binDir string) []string {
	baseNames := map[string]bool{}
	for _, f := range minimeshBaseFiles() {
		baseNames[f.Name] = true
	}
	return mismatchesOf(dockerfile, makefile, "", MinimeshBase, img, binDir, func(f File) bool { return baseNames[f.Name] })
}

// initMismatches is mismatches for the Dockerfile's init stage and
// MinimeshInit's img. The files MinimeshInit copies from Debian's
// packages, not from the build, TestMinimeshInitFilesAreDebians checks
// (with this host's dpkg); here, that the stage installs the package they
// come from.
func initMismatches(dockerfile, makefile string, img Image, binDir string) []string {
	bad := mismatchesOf(dockerfile, makefile, "init", MinimeshInitBase, img, binDir, func(f File) bool { return f.Src == "" || !strings.HasPrefix(f.Src, binDir) })
	d, err := readDockerfileTarget(dockerfile, "init")
	if err != nil {
		return bad // said
	}
	if !slices.Equal(d.packages, []string{MinimeshInitPackage}) || !d.withoutRecommends {
		bad = append(bad, fmt.Sprintf("the init stage installs %q (without recommends: %v), MinimeshInit copies %s's files (without recommends)", d.packages, d.withoutRecommends, MinimeshInitPackage))
	}
	return bad
}

// mismatchesOf compares the Dockerfile's stage target (as
// readDockerfileTarget) on base with img; fromBase says which files of
// img are the base's (or its packages'), not the build's.
func mismatchesOf(dockerfile, makefile, target, base string, img Image, binDir string, fromBase func(File) bool) []string {
	var bad []string
	d, err := readDockerfileTarget(dockerfile, target)
	if err != nil {
		return []string{"Dockerfile: " + err.Error()}
	}
	mk, err := makeBuilds(makefile)
	if err != nil {
		return []string{"Makefile: " + err.Error()}
	}
	if d.from != base {
		bad = append(bad, fmt.Sprintf("the Dockerfile builds on %s, the image mirrors %s", d.from, base))
	}
	got := ociConfig{User: img.User, Entrypoint: img.Entrypoint, Cmd: img.Cmd, Env: img.Env, WorkingDir: img.WorkingDir}
	if !reflect.DeepEqual(nilIfEmpty(got), nilIfEmpty(d.config)) {
		bad = append(bad, fmt.Sprintf("config: the image %+v, the Dockerfile %+v", got, d.config))
	}

	// The same go builds: each package the Dockerfile builds, the Makefile
	// builds with the same environment and flags.
	byPkg := map[string]goBuild{}
	for _, b := range mk {
		byPkg[b.pkg] = b
	}
	for _, b := range d.builds {
		m, ok := byPkg[b.pkg]
		if !ok {
			bad = append(bad, fmt.Sprintf("the Dockerfile builds %s, the Makefile's build target does not", b.pkg))
			continue
		}
		if !reflect.DeepEqual(b.env, m.env) {
			bad = append(bad, fmt.Sprintf("%s: built with environment %v in the Dockerfile, %v in the Makefile", b.pkg, b.env, m.env))
		}
		if !reflect.DeepEqual(b.flags, m.flags) {
			bad = append(bad, fmt.Sprintf("%s: built with flags %q in the Dockerfile, %q in the Makefile", b.pkg, b.flags, m.flags))
		}
	}

	// The same files, from the same packages: the Dockerfile's COPYs are
	// the image's files but those it mirrors from the base.
	want := map[string]imageFile{}
	for _, f := range d.files {
		want[f.name] = f
	}
	for _, f := range img.Files {
		if fromBase(f) {
			continue
		}
		w, ok := want[f.Name]
		delete(want, f.Name)
		if !ok {
			bad = append(bad, fmt.Sprintf("the image holds %s, the Dockerfile does not copy it", f.Name))
			continue
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o755
		}
		if mode != w.mode || f.UID != w.uid || f.GID != w.gid || f.Dir {
			bad = append(bad, fmt.Sprintf("%s: the image's is %o %d:%d, the Dockerfile's %o %d:%d", f.Name, mode, f.UID, f.GID, w.mode, w.uid, w.gid))
		}
		m, ok := byPkg[w.pkg]
		if !ok {
			bad = append(bad, fmt.Sprintf("%s: the Dockerfile builds it from %s, the Makefile's build target does not build that", f.Name, w.pkg))
			continue
		}
		if want := filepath.Join(binDir, path.Base(m.out)); f.Src != want {
			bad = append(bad, fmt.Sprintf("%s: the image copies %s, but the Makefile builds %s (the Dockerfile's) into %s", f.Name, f.Src, w.pkg, want))
		}
	}
	for name := range want {
		bad = append(bad, fmt.Sprintf("the Dockerfile copies %s, the image does not hold it", name))
	}
	sort.Strings(bad)
	return bad
}

func nilIfEmpty(c ociConfig) ociConfig {
	for _, p := range []*[]string{&c.Entrypoint, &c.Cmd, &c.Env} {
		if len(*p) == 0 {
			*p = nil
		}
	}
	return c
}

func readRepoFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestMinimeshIsTheDockerfiles checks that the Dockerfile and Minimesh
// describe one image, built by the Dockerfile and `make build` alike.
func TestMinimeshIsTheDockerfiles(t *testing.T) {
	dockerfile, makefile := readRepoFile(t, "Dockerfile"), readRepoFile(t, "Makefile")
	d, err := readDockerfile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.files) != 2 || len(d.builds) != 2 {
		t.Errorf("the Dockerfile copies %+v from builds %+v: want both binaries", d.files, d.builds)
	}
	for _, b := range d.builds {
		if !slices.Contains(b.env, "CGO_ENABLED=0") {
			t.Errorf("%s: built with %v, want CGO_ENABLED=0 (static)", b.pkg, b.env)
		}
	}
	bin := "/some/bin"
	for _, m := range mismatches(dockerfile, makefile, Minimesh(bin, "minimesh.local/minimesh:t"), bin) {
		t.Error(m)
	}
}

// TestMismatchesFail changes one side at a time and expects the
// comparison to notice.
func TestMismatchesFail(t *testing.T) {
	dockerfile, makefile := readRepoFile(t, "Dockerfile"), readRepoFile(t, "Makefile")
	bin := "/some/bin"
	good := Minimesh(bin, "r")
	if m := mismatches(dockerfile, makefile, good, bin); len(m) != 0 {
		t.Fatalf("the real ones disagree: %v", m)
	}
	mustReplace := func(s, old, new string) string {
		t.Helper()
		if !strings.Contains(s, old) {
			t.Fatalf("%q not found", old)
		}
		return strings.Replace(s, old, new, 1)
	}
	dockerEdits := map[string]string{
		"cmd":        mustReplace(dockerfile, `CMD ["/minimesh-proxy", "run"]`, `CMD ["/minimesh-proxy"]`),
		"entrypoint": mustReplace(dockerfile, `CMD ["/minimesh-proxy", "run"]`, `ENTRYPOINT ["/minimesh-proxy"]`+"\n"+`CMD ["run"]`),
		"user":       mustReplace(dockerfile, "USER 65532:65532", "USER 65532"),
		"env":        dockerfile + "ENV GODEBUG=x509negativeserial=1\n",
		"workdir":    dockerfile + "WORKDIR /\n",
		"base":       mustReplace(dockerfile, "static-debian12:nonroot", "static-debian12:latest"),
		"dst":        mustReplace(dockerfile, "/out/minimesh /minimesh", "/out/minimesh /usr/bin/minimesh"),
		"third file": mustReplace(dockerfile, "USER 65532", "COPY --from=build /out/minimesh /minimesh2\nUSER 65532"),
		"chmod":      mustReplace(dockerfile, "COPY --from=build /out/minimesh /", "COPY --chmod=0555 --from=build /out/minimesh /"),
		"ldflags":    mustReplace(dockerfile, `-ldflags "-s -w -X`, `-ldflags "-w -X`),
		"trimpath":   mustReplace(dockerfile, "go build -trimpath", "go build"),
		"cgo":        mustReplace(dockerfile, "RUN CGO_ENABLED=0 go build", "RUN go build"),
		"version":    mustReplace(dockerfile, "Version=${VERSION}", "Version=dev"),
		"package":    strings.ReplaceAll(dockerfile, "./injector/cmd/minimesh", "./injector/cmd/other"),
	}
	for name, df := range dockerEdits {
		if m := mismatches(df, makefile, good, bin); len(m) == 0 {
			t.Errorf("Dockerfile %s changed: no mismatch found", name)
		}
	}
	makeEdits := map[string]string{
		"ldflags": mustReplace(makefile, "LDFLAGS := -s -w", "LDFLAGS := -s"),
		"cgo":     mustReplace(makefile, "CGO_ENABLED=0 $(GO) build -trimpath -ldflags \"$(LDFLAGS)\" -o $(BIN_DIR)/minimesh ", "$(GO) build -trimpath -ldflags \"$(LDFLAGS)\" -o $(BIN_DIR)/minimesh "),
		"race":    mustReplace(makefile, "build -trimpath -ldflags", "build -race -trimpath -ldflags"),
		"version": mustReplace(makefile, "Version=$(VERSION)", "Version=dev"),
		"out":     mustReplace(makefile, "-o $(BIN_DIR)/minimesh ./injector", "-o $(BIN_DIR)/mm ./injector"),
	}
	for name, mf := range makeEdits {
		if m := mismatches(dockerfile, mf, good, bin); len(m) == 0 {
			t.Errorf("Makefile %s changed: no mismatch found", name)
		}
	}
	goEdits := map[string]func(*Image){
		"entrypoint": func(i *Image) { i.Entrypoint = []string{"/minimesh-proxy"} },
		"cmd":        func(i *Image) { i.Cmd = []string{"/minimesh", "controller"} },
		"user":       func(i *Image) { i.User = "" },
		"env":        func(i *Image) { i.Env = nil },
		"workdir":    func(i *Image) { i.WorkingDir = "" },
		"file gone":  func(i *Image) { i.Files = i.Files[1:] },
		"extra file": func(i *Image) { i.Files = append(i.Files, File{Name: "/bin/sh", Data: []byte("x")}) },
		"mode":       func(i *Image) { i.Files[0].Mode = 0o700 },
		"src":        func(i *Image) { i.Files[0].Src, i.Files[1].Src = i.Files[1].Src, i.Files[0].Src },
	}
	for name, edit := range goEdits {
		img := Minimesh(bin, "r")
		edit(&img)
		if m := mismatches(dockerfile, makefile, img, bin); len(m) == 0 {
			t.Errorf("Minimesh %s changed: no mismatch found", name)
		}
	}
}

// TestMinimeshTar checks the image as written, as ctr imports it: its
// config is the Dockerfile's, and its layer holds the binaries, the
// users and the CA certificates.
func TestMinimeshTar(t *testing.T) {
	d, err := readDockerfile(readRepoFile(t, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	for _, name := range []string{"minimesh-proxy", "minimesh"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("binary "+name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer func(old string) { hostCACerts = old }(hostCACerts)
	hostCACerts = ca

	const ref = "minimesh.local/minimesh:test"
	var buf bytes.Buffer
	if err := WriteOCI(&buf, Minimesh(bin, ref)); err != nil {
		t.Fatal(err)
	}
	gotRef, cfg, layer := readOCI(t, buf.Bytes())
	if gotRef != ref {
		t.Errorf("index names %q, want %q", gotRef, ref)
	}
	if !reflect.DeepEqual(nilIfEmpty(cfg), nilIfEmpty(d.config)) {
		t.Errorf("config %+v, the Dockerfile's %+v", cfg, d.config)
	}
	want := map[string]struct {
		mode     int64
		uid, gid int
		data     string
	}{
		"minimesh-proxy":                    {0o755, 0, 0, "binary minimesh-proxy"},
		"minimesh":                          {0o755, 0, 0, "binary minimesh"},
		"etc/":                              {0o755, 0, 0, ""},
		"etc/passwd":                        {0o644, 0, 0, etcPasswd},
		"etc/group":                         {0o644, 0, 0, etcGroup},
		"etc/ssl/":                          {0o755, 0, 0, ""},
		"etc/ssl/certs/":                    {0o755, 0, 0, ""},
		"etc/ssl/certs/ca-certificates.crt": {0o644, 0, 0, "-----BEGIN CERTIFICATE-----\n"},
		"home/":                             {0o755, 0, 0, ""},
		"home/nonroot/":                     {0o700, 65532, 65532, ""},
		"tmp/":                              {0o1777, 0, 0, ""},
	}
	for name, h := range layer {
		w, ok := want[name]
		if !ok {
			t.Errorf("layer holds %s", name)
			continue
		}
		delete(want, name)
		if h.Mode != w.mode || h.Uid != w.uid || h.Gid != w.gid || h.data != w.data {
			t.Errorf("%s: %o %d:%d %q, want %o %d:%d %q", name, h.Mode, h.Uid, h.Gid, h.data, w.mode, w.uid, w.gid, w.data)
		}
	}
	for name := range want {
		t.Errorf("layer lacks %s", name)
	}

	// The user the Dockerfile names is nonroot, at home in the working
	// directory, and SSL_CERT_FILE names the bundle.
	uid, gid, _ := strings.Cut(d.config.User, ":")
	if !strings.Contains(etcPasswd, "\nnonroot:x:"+uid+":"+gid+":nonroot:"+d.config.WorkingDir+":") ||
		!strings.Contains(etcGroup, "\nnonroot:x:"+gid+":") {
		t.Errorf("/etc/passwd and /etc/group do not name %s nonroot", d.config.User)
	}
	if !slices.Contains(d.config.Env, "SSL_CERT_FILE="+CACerts) {
		t.Errorf("SSL_CERT_FILE is not %s: %v", CACerts, d.config.Env)
	}
}

// TestMinimeshWithoutCACerts: a host without a CA bundle makes an image
// without one, the rest unchanged.
func TestMinimeshWithoutCACerts(t *testing.T) {
	defer func(old string) { hostCACerts = old }(hostCACerts)
	hostCACerts = filepath.Join(t.TempDir(), "none")
	img := Minimesh("/bin", "r")
	if slices.ContainsFunc(img.Files, func(f File) bool { return f.Name == CACerts }) {
		t.Errorf("Minimesh holds %s that the host lacks", CACerts)
	}
}

type layerEntry struct {
	*tar.Header
	data string
}

// readOCI reads an OCI layout tar of one image: its name, its config and
// its layer's entries by name.
func readOCI(t *testing.T, b []byte) (string, ociConfig, map[string]layerEntry) {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name], _ = io.ReadAll(tr)
	}
	blob := func(digest string) []byte {
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")]
		if !ok {
			t.Fatalf("no blob %s", digest)
		}
		return b
	}
	var index struct{ Manifests []descriptor }
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", files["index.json"], err)
	}
	var man struct {
		Config descriptor
		Layers []descriptor
	}
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &man); err != nil || len(man.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	var cfg struct {
		Config ociConfig
	}
	if err := json.Unmarshal(blob(man.Config.Digest), &cfg); err != nil {
		t.Fatal(err)
	}
	layer := map[string]layerEntry{}
	lr := tar.NewReader(bytes.NewReader(blob(man.Layers[0].Digest)))
	for {
		h, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(lr)
		layer[h.Name] = layerEntry{h, string(data)}
	}
	return index.Manifests[0].Annotations["io.containerd.image.name"], cfg.Config, layer
}

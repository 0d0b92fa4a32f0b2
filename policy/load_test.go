package policy

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// configMapVolume lays out files the way the kubelet mounts a ConfigMap:
// the data in a timestamped dot directory, ..data pointing to it, and
// one visible symlink per key through ..data.
func configMapVolume(t *testing.T, files map[string]string) string {
	dir := t.TempDir()
	const ts = "..2025_01_01_00_00_00.000000001"
	for name, content := range files {
		write(t, filepath.Join(dir, ts, name), content)
	}
	symlink(t, ts, filepath.Join(dir, "..data"))
	for name := range files {
		symlink(t, filepath.Join("..data", name), filepath.Join(dir, name))
	}
	return dir
}

func policyYAML(service string) string {
	return header + "metadata: {name: p}\nspec:\n  service: " + service + "\n"
}

func services(ps []*ResiliencePolicy) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Spec.Service)
	}
	return out
}

func TestLoadConfigMapVolume(t *testing.T) {
	dir := configMapVolume(t, map[string]string{
		"b.yaml":    policyYAML("b-service"),
		"a.yml":     policyYAML("a-service"),
		"c.json":    `{"apiVersion": "minimesh.io/v1alpha1", "kind": "ResiliencePolicy", "spec": {"service": "*"}}`,
		"README.md": "not a policy",
	})
	// Neither a subdirectory nor a dot file is read.
	write(t, filepath.Join(dir, "sub", "d.yaml"), policyYAML("d-service"))
	write(t, filepath.Join(dir, ".e.yaml"), policyYAML("e-service"))

	ps, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := services(ps), []string{"a-service", "b-service", "*"}; !reflect.DeepEqual(got, want) {
		t.Errorf("services = %q, want %q (name order, dot entries skipped)", got, want)
	}
	if want := filepath.Join(dir, "a.yml") + ":1:1"; ps[0].Source != want {
		t.Errorf("Source = %q, want the visible key path %q", ps[0].Source, want)
	}
}

func TestLoadCollectsAllFiles(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "1.yaml"), policyYAML("auth-service")+"---\n"+policyYAML("x-service")+"  timeout: 0s\n")
	write(t, filepath.Join(dir, "2.yaml"), "# second\n"+policyYAML("Auth-Service"))
	write(t, filepath.Join(dir, "3.yaml"), policyYAML("y-service")+"  retries: 3\n")

	_, err := Load(dir)
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("err = %T %v, want ErrorList", err, err)
	}
	f := func(name string) string { return filepath.Join(dir, name) }
	want := []string{
		f("1.yaml") + ":12:12: spec.timeout: must be > 0 (omit it for no timeout), got 0s",
		f("2.yaml") + `:6:12: spec.service: service "auth-service" already has a policy at ` + f("1.yaml") + ":1:1",
		f("3.yaml") + ":6:12: spec.retries: want a mapping, got integer 3",
	}
	var got []string
	for _, e := range list {
		got = append(got, e.Error())
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}

func TestLoadPaths(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.txt")
	write(t, a, policyYAML("a-service"))
	write(t, b, policyYAML("b-service"))

	// A file named explicitly is read whatever its extension, and a file
	// reached twice is read once instead of clashing with itself.
	ps, err := Load(b, dir, a)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := services(ps), []string{"b-service", "a-service"}; !reflect.DeepEqual(got, want) {
		t.Errorf("services = %q, want %q", got, want)
	}

	missing := filepath.Join(dir, "nope")
	_, err = Load(a, missing)
	if !errors.Is(err, fs.ErrNotExist) || err.Error() != "load "+missing+": stat "+missing+": no such file or directory" {
		t.Errorf("err = %v", err)
	}

	ps, err = Load()
	if err != nil || len(ps) != 0 {
		t.Errorf("Load() = %v, %v", ps, err)
	}
}

func TestLoadDanglingSymlink(t *testing.T) {
	dir := t.TempDir()
	symlink(t, "..data/gone.yaml", filepath.Join(dir, "gone.yaml"))
	_, err := Load(dir)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err = %v, want a not-exist error", err)
	}
}

// TestScopes: a sidecar's files hold one policy per service whatever
// their namespaces (every one applies to that sidecar), while the
// control plane's hold one per service in each namespace and one
// cluster-wide, a namespace's own overriding the cluster-wide one.
func TestScopes(t *testing.T) {
	doc := func(ns, service string) string {
		meta := "{name: p}"
		if ns != "" {
			meta = "{name: p, namespace: " + ns + "}"
		}
		return header + "metadata: " + meta + "\nspec:\n  service: " + service + "\n"
	}
	tests := []struct {
		name  string
		files map[string]string
		// want is each scope's verdict: "" for accepted, else the
		// errors, {dir} standing for the directory.
		want map[Scope]string
	}{
		{"cluster-wide and a namespace's", map[string]string{"a.yaml": doc("", "geo") + "---\n" + doc("shop", "geo")},
			map[Scope]string{
				OneSidecar:   `{dir}/a.yaml:11:12: spec.service: service "geo" already has a policy at {dir}/a.yaml:1:1`,
				PerNamespace: "",
			}},
		{"two namespaces, two files", map[string]string{"a.yaml": doc("web", "geo"), "b.yaml": doc("shop", "geo")},
			map[Scope]string{
				OneSidecar:   `{dir}/b.yaml:5:12: spec.service: service "geo" already has a policy at {dir}/a.yaml:1:1`,
				PerNamespace: "",
			}},
		{"one namespace twice, spelled apart", map[string]string{"a.yaml": doc("shop", "geo"), "b.yaml": doc("shop", "Geo.")},
			map[Scope]string{
				OneSidecar:   `{dir}/b.yaml:5:12: spec.service: service "geo" already has a policy at {dir}/a.yaml:1:1`,
				PerNamespace: `{dir}/b.yaml:5:12: spec.service: service "geo" already has a policy in namespace "shop" at {dir}/a.yaml:1:1`,
			}},
		{"cluster-wide twice", map[string]string{"a.yaml": doc("", "geo") + "---\n" + doc("", "geo")},
			map[Scope]string{
				OneSidecar:   `{dir}/a.yaml:11:12: spec.service: service "geo" already has a policy at {dir}/a.yaml:1:1`,
				PerNamespace: `{dir}/a.yaml:11:12: spec.service: service "geo" already has a cluster-wide policy at {dir}/a.yaml:1:1`,
			}},
		{"other services", map[string]string{"a.yaml": doc("shop", "geo") + "---\n" + doc("shop", "geo:80") + "---\n" + doc("", "geo.shop")},
			map[Scope]string{OneSidecar: "", PerNamespace: ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			var files []File
			for _, name := range []string{"a.yaml", "b.yaml"} {
				if body, ok := tt.files[name]; ok {
					write(t, filepath.Join(dir, name), body)
					files = append(files, File{Name: filepath.Join(dir, name), Data: []byte(body)})
				}
			}
			for scope, want := range tt.want {
				want = strings.ReplaceAll(want, "{dir}", dir)
				ps, err := scope.Load(dir)
				got := ""
				if err != nil {
					got = err.Error()
				}
				if got != want {
					t.Errorf("scope %d: Load: %q, want %q", scope, got, want)
				}
				if err == nil && len(ps) != strings.Count(strings.Join(slices.Collect(maps.Values(tt.files)), ""), "kind:") {
					t.Errorf("scope %d: %d policies", scope, len(ps))
				}
				// Decode over the same contents is the same verdict.
				_, derr := scope.Decode(files)
				if (derr == nil) != (err == nil) || derr != nil && derr.Error() != got {
					t.Errorf("scope %d: Decode: %v, Load: %v", scope, derr, err)
				}
			}
			// The sidecar's Load is OneSidecar's.
			_, err := Load(dir)
			if got, want := fmt.Sprint(err), strings.ReplaceAll(tt.want[OneSidecar], "{dir}", dir); want != "" && got != want || want == "" && err != nil {
				t.Errorf("Load: %v, want OneSidecar's verdict", err)
			}
		})
	}
}

// TestLoadReport: what a directory holds that Load does not read is
// reported, so that lint, check and the sidecar's log can say so: a
// policy in a file named `geo` (a ConfigMap key without its extension)
// loaded nothing without a word. Hidden entries, a ConfigMap volume's
// ..data and timestamped ones among them, are not worth a line.
func TestLoadReport(t *testing.T) {
	tests := []struct {
		name string
		// setup fills dir and returns the paths to load, {dir} for dir.
		setup   func(t *testing.T, dir string) []string
		skipped []string // Skipped.String(), {dir} for dir
		bare    []string
		n       int // policies loaded
	}{
		{"a file without its extension", func(t *testing.T, dir string) []string {
			write(t, filepath.Join(dir, "geo"), policyYAML("geo"))
			return []string{dir}
		}, []string{"skipped {dir}/geo: not .yaml, .yml or .json"}, []string{"{dir}"}, 0},
		{"beside policy files", func(t *testing.T, dir string) []string {
			write(t, filepath.Join(dir, "a.yaml"), policyYAML("a"))
			write(t, filepath.Join(dir, "README.md"), "# policies\n")
			write(t, filepath.Join(dir, "sub", "b.yaml"), policyYAML("b"))
			write(t, filepath.Join(dir, "z.yaml.bak"), policyYAML("a"))
			return []string{dir}
		}, []string{
			"skipped {dir}/README.md: not .yaml, .yml or .json",
			"skipped {dir}/sub: a directory, not searched",
			"skipped {dir}/z.yaml.bak: not .yaml, .yml or .json",
		}, nil, 1},
		{"a directory named as a policy file", func(t *testing.T, dir string) []string {
			write(t, filepath.Join(dir, "a.yaml"), policyYAML("a"))
			write(t, filepath.Join(dir, "old.yaml", "b.yaml"), policyYAML("b"))
			return []string{dir}
		}, []string{"skipped {dir}/old.yaml: not a regular file (a directory)"}, nil, 1},
		{"hidden entries only", func(t *testing.T, dir string) []string {
			write(t, filepath.Join(dir, ".geo.yaml"), policyYAML("geo"))
			write(t, filepath.Join(dir, ".git", "config"), "")
			return []string{dir}
		}, nil, []string{"{dir}"}, 0},
		{"empty", func(t *testing.T, dir string) []string { return []string{dir} }, nil, []string{"{dir}"}, 0},
		{"a ConfigMap volume with a key without its extension", func(t *testing.T, dir string) []string {
			return []string{configMapVolume(t, map[string]string{"a.yaml": policyYAML("a"), "geo": policyYAML("geo")})}
		}, []string{"skipped {vol}/geo: not .yaml, .yml or .json"}, nil, 1},
		{"an entry also named on its own", func(t *testing.T, dir string) []string {
			write(t, filepath.Join(dir, "geo"), policyYAML("geo"))
			write(t, filepath.Join(dir, "notes"), "")
			return []string{dir, filepath.Join(dir, "geo")}
		}, []string{"skipped {dir}/notes: not .yaml, .yml or .json"}, []string{"{dir}"}, 1},
		{"a directory and a symlink to it", func(t *testing.T, dir string) []string {
			write(t, filepath.Join(dir, "real", "a.yaml"), policyYAML("a"))
			write(t, filepath.Join(dir, "real", "geo"), policyYAML("geo"))
			symlink(t, "real", filepath.Join(dir, "link"))
			return []string{filepath.Join(dir, "real"), filepath.Join(dir, "link")}
		}, []string{"skipped {dir}/real/geo: not .yaml, .yml or .json"}, nil, 1},
		{"files only", func(t *testing.T, dir string) []string {
			write(t, filepath.Join(dir, "geo"), policyYAML("geo"))
			return []string{filepath.Join(dir, "geo")}
		}, nil, nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			paths := tt.setup(t, dir)
			ps, rep, err := OneSidecar.LoadReport(paths...)
			if err != nil {
				t.Fatal(err)
			}
			var skipped []string
			for _, s := range rep.Skipped {
				skipped = append(skipped, s.String())
			}
			r := strings.NewReplacer("{dir}", dir, "{vol}", paths[0])
			fill := func(ss []string) []string {
				var out []string
				for _, s := range ss {
					out = append(out, r.Replace(s))
				}
				return out
			}
			if want := fill(tt.skipped); !reflect.DeepEqual(skipped, want) {
				t.Errorf("skipped:\n%q\nwant\n%q", skipped, want)
			}
			if want := fill(tt.bare); !reflect.DeepEqual(rep.Bare, want) {
				t.Errorf("bare = %q, want %q", rep.Bare, want)
			}
			if len(ps) != tt.n {
				t.Errorf("%d policies, want %d", len(ps), tt.n)
			}
		})
	}
}

// TestLoadSameFileOnce: a file reached twice is read once whatever the
// spelling of its path, the name it was first reached by kept: before,
// only the same spelling was, and `lint dd $PWD/dd/a.yaml` or `lint dd
// ddl` (ddl a symlink to dd) refused a file for conflicting with itself.
func TestLoadSameFileOnce(t *testing.T) {
	root := t.TempDir()
	dd := filepath.Join(root, "dd")
	write(t, filepath.Join(dd, "a.yaml"), policyYAML("up"))
	symlink(t, "dd", filepath.Join(root, "ddl"))
	symlink(t, filepath.Join("dd", "a.yaml"), filepath.Join(root, "a-link.yaml"))
	if err := os.Link(filepath.Join(dd, "a.yaml"), filepath.Join(root, "hard.yaml")); err != nil {
		t.Fatal(err)
	}
	t.Chdir(root)
	abs := func(p string) string { return filepath.Join(root, p) }
	for _, paths := range [][]string{
		{"dd", abs("dd/a.yaml")},
		{"dd", "ddl"},
		{"ddl", "dd"},
		{"dd/a.yaml", "./dd//a.yaml", "ddl/a.yaml"},
		{"dd", "a-link.yaml"},
		{"dd", "hard.yaml"},
		{abs("ddl"), "dd"},
	} {
		t.Run(strings.Join(paths, " "), func(t *testing.T) {
			ps, err := Load(paths...)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			first := filepath.Clean(paths[0])
			if !strings.HasSuffix(first, ".yaml") {
				first = filepath.Join(first, "a.yaml")
			}
			if len(ps) != 1 || ps[0].Source != first+":1:1" {
				t.Errorf("policies %q from %q, want one from %s", services(ps), sources(ps), first)
			}
		})
	}
	// Two files of the same content are two files.
	write(t, filepath.Join(root, "copy.yaml"), policyYAML("up"))
	if _, err := Load("dd", "copy.yaml"); err == nil || !strings.Contains(err.Error(), `service "up" already has a policy at dd/a.yaml:1:1`) {
		t.Errorf("a copy: %v, want the conflict", err)
	}
}

func sources(ps []*ResiliencePolicy) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Source)
	}
	return out
}

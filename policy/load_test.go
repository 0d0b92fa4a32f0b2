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

package policy

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
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

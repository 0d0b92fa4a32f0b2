package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLintHugeScalar: a huge scalar in a policy file gets one short line
// with its position; a 50 MB one used to print a 52 MB error. (5 MB here:
// the answer does not depend on the size, and the race detector makes
// YAML parsing slow.)
func TestLintHugeScalar(t *testing.T) {
	file := filepath.Join(t.TempDir(), "huge.yaml")
	data := []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: a}\nspec:\n  service: ")
	data = append(data, bytes.Repeat([]byte("x"), 5<<20)...)
	if err := os.WriteFile(file, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	data = nil
	for _, cmd := range [][]string{{"policy", "lint", file}, {"policy", "export", "--to", "envoy", file}} {
		code, out, errOut := run(cmd...)
		if code != 1 || out != "" || len(errOut) > 300 || !strings.HasPrefix(errOut, file+":5:12: spec.service: ") || !strings.HasSuffix(errOut, "… (5242880 bytes)\n") {
			t.Errorf("%s: exit %d, stdout %.100q, %d bytes of stderr: %.400q", cmd[1], code, out, len(errOut), errOut)
		}
	}
}

// TestExportNamespace: --namespace is the namespace of the policies that
// name none, for both targets: the Linkerd export ignored it and put
// their routes and Services in "default".
func TestExportNamespace(t *testing.T) {
	file := filepath.Join(t.TempDir(), "geo.yaml")
	doc := "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\nspec:\n  service: geo\n  timeout: 2s\n"
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	for to, want := range map[string]string{"linkerd": "namespace: shop", "envoy": "geo.shop.svc.cluster.local"} {
		code, out, errOut := run("policy", "export", "--to", to, "--namespace", "shop", file)
		if code != 0 || !strings.Contains(out, want) || strings.Contains(out, "namespace: default") {
			t.Errorf("export --to %s --namespace shop: exit %d, stderr %q, output lacks %q:\n%s", to, code, errOut, want, out)
		}
	}
}

// TestLintPerNamespace: lint reads files as one sidecar does unless told
// --per-namespace, as the controller's --policy-dir does: `geo`
// cluster-wide and `geo` in shop is the controller's override and a
// sidecar's refusal, and the refusal says which reading made it (before,
// lint had only the sidecar's, and refused the controller's files without
// saying why the controller took them).
func TestLintPerNamespace(t *testing.T) {
	dir := filepath.Join("testdata", "namespaces")
	override, shopTwice, clusterTwice := filepath.Join(dir, "override.yaml"), filepath.Join(dir, "shop-twice.yaml"), filepath.Join(dir, "clusterwide-twice.yaml")
	bad := filepath.Join("testdata", "bad", "bad.yaml")
	_, _, badErrs := run("policy", "lint", bad)
	tests := []struct {
		name           string
		args           []string
		code           int
		stdout, stderr string
	}{
		{"the controller's override, as a sidecar reads it", []string{override}, 1, "",
			override + `:14:12: spec.service: service "geo" already has a policy at ` + override + ":3:1\n" + lintSidecarMode + "\n"},
		{"the controller's override, as the controller reads it", []string{"--per-namespace", override}, 0,
			"3 policies OK (cluster-wide: geo, *; shop: geo)\n", ""},
		{"one namespace's service twice, as a sidecar reads it", []string{shopTwice}, 1, "",
			shopTwice + `:12:12: spec.service: service "geo" already has a policy at ` + shopTwice + ":2:1\n"},
		{"one namespace's service twice, as the controller reads it", []string{"--per-namespace", shopTwice}, 1, "",
			shopTwice + `:12:12: spec.service: service "geo" already has a policy in namespace "shop" at ` + shopTwice + ":2:1\n"},
		{"a cluster-wide service twice, as the controller reads it", []string{"--per-namespace", clusterTwice}, 1, "",
			clusterTwice + `:12:12: spec.service: service "maps" already has a cluster-wide policy at ` + clusterTwice + ":2:1\n"},
		{"a namespace's files", []string{"--per-namespace", "testdata/good"}, 0,
			"3 policies OK (bakery-ia: auth-service, nominatim-service, *)\n", readmeSkipped},
		{"bad fields, either way", []string{"--per-namespace", bad}, 1, "", badErrs},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := run(append([]string{"policy", "lint"}, tt.args...)...)
			if code != tt.code || out != tt.stdout || errOut != tt.stderr {
				t.Errorf("lint %v: exit %d, stdout %q, stderr:\n%s\nwant exit %d, stdout %q, stderr:\n%s", tt.args, code, out, errOut, tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}

// TestLintSkipped: lint names what a directory holds that it does not
// read, fails on a directory that holds no policy file, and reads a file
// reached twice once. Before, `lint noext` (a policy in noext/geo)
// printed "0 policies OK", and `lint dd $PWD/dd/a.yaml` or `lint dd ddl`
// (ddl a symlink to dd) refused dd/a.yaml for conflicting with itself.
func TestLintSkipped(t *testing.T) {
	root := t.TempDir()
	t.Chdir(root)
	doc := "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: up}\nspec: {service: up, timeout: banana}\n"
	for name, content := range map[string]string{
		"noext/geo":        doc,
		"dd/a.yaml":        strings.Replace(doc, ", timeout: banana", "", 1),
		"dd/notes.txt":     "",
		"dd/.a.yaml.swp":   "",
		"vol/..v1/a.yaml":  strings.Replace(doc, ", timeout: banana", "", 1),
		"hidden/.geo.yaml": doc,
	} {
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range [][2]string{{"dd", "ddl"}, {"..v1", "vol/..data"}, {"..data/a.yaml", "vol/a.yaml"}} {
		if err := os.Symlink(l[0], l[1]); err != nil {
			t.Fatal(err)
		}
	}
	noPolicy := func(dir string) string {
		return "lint: " + dir + " holds no policy file (.yaml, .yml or .json): a sidecar given it loads no policy\n"
	}
	tests := []struct {
		name           string
		args           []string
		code           int
		stdout, stderr string
	}{
		{"a policy file without its extension", []string{"noext"}, 1, "",
			"skipped noext/geo: not .yaml, .yml or .json\n" + noPolicy("noext")},
		{"that file named on its own", []string{"noext/geo"}, 1, "",
			"noext/geo:4:30: spec.timeout: want a duration such as 2s or 500ms, got string \"banana\"\n"},
		{"only hidden files", []string{"hidden"}, 1, "", noPolicy("hidden")},
		{"beside a policy, and a file read twice by another spelling", []string{"dd", filepath.Join(root, "dd", "a.yaml")}, 0,
			"1 policies OK (up)\n", "skipped dd/notes.txt: not .yaml, .yml or .json\n"},
		{"a directory and a symlink to it", []string{"dd", "ddl"}, 0, "1 policies OK (up)\n",
			"skipped dd/notes.txt: not .yaml, .yml or .json\n"},
		{"a ConfigMap volume", []string{"vol"}, 0, "1 policies OK (up)\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := run(append([]string{"policy", "lint"}, tt.args...)...)
			if code != tt.code || out != tt.stdout || errOut != tt.stderr {
				t.Errorf("lint %v: exit %d, stdout %q, stderr:\n%s\nwant exit %d, stdout %q, stderr:\n%s", tt.args, code, out, errOut, tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}

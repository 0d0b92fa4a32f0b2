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

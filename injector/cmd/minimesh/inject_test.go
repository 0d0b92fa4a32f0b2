package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const deploy = `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: example/web:1
        env: [{name: HTTP_PROXY, value: "http://corp:3128"}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
`

func TestInjectFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "app.yaml")
	if err := os.WriteFile(f, []byte(deploy), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("proxy:\n  image: registry.local/minimesh:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run("inject", "-f", f, "--config", cfg)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "image: registry.local/minimesh:1") || !strings.HasSuffix(out, "---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n") {
		t.Fatalf("stdout:\n%s", out)
	}
	for _, want := range []string{`deployment "web" injected`, `Warning: minimesh: container "web" sets HTTP_PROXY=http://corp:3128 itself`} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr %q lacks %q", errOut, want)
		}
	}
}

func TestInjectStdin(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() { w.WriteString(deploy); w.Close() }()
	stdin := os.Stdin
	os.Stdin = r
	defer func() { os.Stdin = stdin }()
	code, out, errOut := run("inject", "-f", "-")
	if code != 0 || !strings.Contains(out, "name: minimesh-proxy") {
		t.Fatalf("exit %d, stderr %s, stdout:\n%s", code, errOut, out)
	}
}

func TestInjectRefused(t *testing.T) {
	f := filepath.Join(t.TempDir(), "bad.yaml")
	bad := strings.Replace(deploy, "metadata: {labels: {app: web}}", "metadata: {labels: {app: web}, annotations: {minimesh.io/interception: ebpf}}", 1)
	if err := os.WriteFile(f, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run("inject", "-f", f)
	if code != 1 || out != "" {
		t.Fatalf("exit %d, stdout %q: want 1 and nothing written", code, out)
	}
	for _, want := range []string{f, "document 1 (line 1)", `deployment "web"`, `minimesh.io/interception]: "ebpf"`} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr %q lacks %q", errOut, want)
		}
	}
}

func TestInjectNeedsFile(t *testing.T) {
	if code, _, errOut := run("inject"); code != 1 || !strings.Contains(errOut, "filename") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestPolicyExport(t *testing.T) {
	for _, tt := range []struct{ to, want string }{
		{"linkerd", "retry.linkerd.io/limit"},
		{"envoy", "# envoy.config.cluster.v3.Cluster"},
	} {
		code, out, errOut := run("policy", "export", "--to", tt.to, "testdata/good")
		if code != 0 || !strings.Contains(out, tt.want) {
			t.Errorf("--to %s: exit %d, stderr %s, stdout:\n%s", tt.to, code, errOut, out)
		}
	}
	if code, _, errOut := run("policy", "export", "--to", "istio", "testdata/good"); code != 1 || !strings.Contains(errOut, `--to "istio"`) {
		t.Errorf("--to istio: exit %d: %s", code, errOut)
	}
	if code, _, errOut := run("policy", "export", "--to", "envoy", "testdata/bad"); code != 1 || !strings.Contains(errOut, "bad.yaml:") {
		t.Errorf("bad policies: exit %d: %s", code, errOut)
	}
}

package main

import (
	"bytes"
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

// runStdin is run with stdin: the command reads cmd.InOrStdin, so the
// test needs no pipe and no global.
func runStdin(stdin string, args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	root := newRootCmd(&out, &errOut)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), errOut.String(), err
}

func TestInjectStdin(t *testing.T) {
	out, errOut, err := runStdin(deploy, "inject", "-f", "-")
	if err != nil || !strings.Contains(out, "name: minimesh-proxy") {
		t.Fatalf("err %v, stderr %s, stdout:\n%s", err, errOut, out)
	}
}

// TestInjectNothingToDo: a stream without workloads comes back exactly,
// and the report is empty.
func TestInjectNothingToDo(t *testing.T) {
	in := "# shop\napiVersion: v1\nkind: Service\nmetadata: {name: web}   # front\n--- # cfg\n" +
		"apiVersion: v1\nkind: ConfigMap\nmetadata:\n    name: c\ndata: {a: \"1\"}\n---\n"
	out, errOut, err := runStdin(in, "inject", "-f", "-")
	if err != nil || out != in || errOut != "" {
		t.Fatalf("err %v, stderr %q, stdout:\n%q", err, errOut, out)
	}
}

func TestInjectReport(t *testing.T) {
	daemonSet := "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  template:\n" +
		"    spec: {hostNetwork: true, containers: [{name: a, image: x}]}\n"
	in := deploy + "---\n" + daemonSet
	out, errOut, err := runStdin(in, "inject", "-f", "-")
	if err != nil {
		t.Fatal(err)
	}
	want := "deployment \"web\" injected\n" +
		"Warning: minimesh: container \"web\" sets HTTP_PROXY=http://corp:3128 itself; its value wins over minimesh's http://127.0.0.1:15001\n" +
		"daemonset \"agent\" skipped: hostNetwork pod\n" +
		"Warning: minimesh: hostNetwork pods are never injected: the sidecar's ports would be the node's\n"
	if errOut != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", errOut, want)
	}
	if !strings.HasSuffix(out, "kind: Service\nmetadata: {name: web}\n---\n"+daemonSet) {
		t.Errorf("the skipped DaemonSet changed:\n%s", out)
	}
}

func TestInjectNotYAML(t *testing.T) {
	out, _, err := runStdin(deploy+"---\nkind: Pod\nmetadata: [\n", "inject", "-f", "-")
	if err == nil || out != "" {
		t.Fatalf("err %v, stdout %q: want an error and nothing written", err, out)
	}
	if want := "stdin: document 3 (line 18): yaml: line 19:"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q lacks %q", err, want)
	}
}

func TestInjectFlags(t *testing.T) {
	dir := t.TempDir()
	badCfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(badCfg, []byte("proxy:\n  imag: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"inject", "-f", "-", "-f", "x.yaml"}, "give one file"},
		{[]string{"inject", "-f", filepath.Join(dir, "missing.yaml")}, "read manifest: open " + filepath.Join(dir, "missing.yaml")},
		{[]string{"inject", "-f", "-", "--config", badCfg}, "load config " + badCfg},
		{[]string{"inject", "-f", "-", "extra"}, "unknown command"},
	} {
		code, out, errOut := run(tt.args...)
		if code != 1 || out != "" || !strings.Contains(errOut, tt.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q: want 1 and %q", tt.args, code, out, errOut, tt.want)
		}
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

package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/injector/manifest"
	"github.com/minimesh/minimesh/internal/heapwatch"
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
// and the report says why of each object, as linkerd inject's does.
func TestInjectNothingToDo(t *testing.T) {
	in := "# shop\napiVersion: v1\nkind: Service\nmetadata: {name: web}   # front\n--- # cfg\n" +
		"apiVersion: v1\nkind: ConfigMap\nmetadata:\n    name: c\ndata: {a: \"1\"}\n---\n"
	out, errOut, err := runStdin(in, "inject", "-f", "-")
	want := "service \"web\" skipped: not a workload minimesh injects\nconfigmap \"c\" skipped: not a workload minimesh injects\n"
	if err != nil || out != in || errOut != want {
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
		"Warning: minimesh: container \"web\" sets HTTP_PROXY=http://corp:3128 itself; its value wins over minimesh's http://127.0.0.1:15001, so minimesh sets neither HTTP_PROXY nor http_proxy\n" +
		"service \"web\" skipped: not a workload minimesh injects\n" +
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

// commentChunk is 64 KiB of comment and a separator: bytes that the
// stream carries but no YAML parser reads, so that tests can move
// megabytes through `minimesh inject` quickly.
var commentChunk = "# " + strings.Repeat("x", 64<<10) + "\n---\n"

// stdoutWatch is a stdout that a test can wait on.
type stdoutWatch struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	n       int64
	keep    bool
	written chan struct{}
}

func (w *stdoutWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n += int64(len(p))
	if w.keep {
		w.buf.Write(p)
	}
	select {
	case w.written <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (w *stdoutWatch) contains(s string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Contains(w.buf.String(), s)
}

// TestInjectStreams: `minimesh inject -f -` writes the first document
// before the rest of its input has arrived (past the 8 MiB it holds back),
// instead of reading everything first.
func TestInjectStreams(t *testing.T) {
	pr, pw := io.Pipe()
	out := &stdoutWatch{keep: true, written: make(chan struct{}, 1)}
	var errOut bytes.Buffer
	root := newRootCmd(out, &errOut)
	root.SetIn(pr)
	root.SetArgs([]string{"inject", "-f", "-"})
	done := make(chan error, 1)
	go func() { done <- root.Execute() }()

	svc := "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n"
	if _, err := io.WriteString(pw, deploy+"---\n"); err != nil {
		t.Fatal(err)
	}
	for range manifest.HoldBytes/len(commentChunk) + 2 {
		if _, err := io.WriteString(pw, commentChunk+svc); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.After(60 * time.Second) // a failing test must not hang
	for !out.contains("name: minimesh-proxy") {
		select {
		case <-out.written:
		case <-deadline:
			t.Fatal("nothing written while the input is still open")
		}
	}
	io.WriteString(pw, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: last}\n")
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !out.contains("metadata: {name: last}\n") || !strings.Contains(errOut.String(), `deployment "web" injected`) {
		t.Fatalf("stderr %q; stdout ends %q", errOut.String(), out.buf.String()[out.buf.Len()-100:])
	}
}

// TestInjectStreamMemory: a 50 MB stream goes through in the memory of
// the output held back and one document; it used to be read whole, and
// its output built whole, before anything was written (1.4 GB of RSS for
// 50 MB of Deployments).
func TestInjectStreamMemory(t *testing.T) {
	// Made as it is read, so that the test holds none of it.
	unit := commentChunk + deploy + "---\n"
	n := 50 << 20 / len(unit)
	pr, pw := io.Pipe()
	go func() {
		for range n {
			io.WriteString(pw, unit)
		}
		pw.Close()
	}()
	out := &stdoutWatch{written: make(chan struct{}, 1)}
	var errOut bytes.Buffer
	root := newRootCmd(out, &errOut)
	root.SetIn(pr)
	root.SetArgs([]string{"inject", "-f", "-"})

	var err error
	grew := int64(heapwatch.Peak(func() { err = root.Execute() }))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d MB in, %d MB out: peak heap +%d MiB", n*len(unit)/1e6, out.n/1e6, grew>>20)
	if grew > 64<<20 {
		t.Fatalf("peak heap +%d MiB for a 50 MB stream", grew>>20)
	}
}

// TestInjectRefusedInStream: a stream that fits what is held back writes
// nothing when its third document is refused.
func TestInjectRefusedInStream(t *testing.T) {
	bad := strings.Replace(deploy, "metadata: {labels: {app: web}}", "metadata: {labels: {app: web}, annotations: {minimesh.io/proxy-memory-limit: 1Ei}}", 1)
	out, errOut, err := runStdin(deploy+"---\n"+bad, "inject", "-f", "-")
	if err == nil || out != "" || !strings.Contains(err.Error(), "document 3 (line 18)") || !strings.Contains(err.Error(), "more than 8Gi") {
		t.Fatalf("err %v, stdout %q, stderr %q", err, out, errOut)
	}
}

// TestInjectNotReallyInjected: the probe's inputs. A pod whose own
// container is named minimesh-proxy is refused (exit 1), naming the
// container; a Deployment whose template carries a hand-copied
// minimesh.io/status without the sidecar is injected, and injecting the
// output again changes nothing. Neither gets the proxy environment
// without the sidecar.
func TestInjectNotReallyInjected(t *testing.T) {
	const named = `apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations: {minimesh.io/inject: enabled}
spec:
  containers:
  - name: app
    image: nginx
  - name: minimesh-proxy
    image: my/own-proxy
`
	const status = `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {minimesh.io/status: injected}
    spec:
      containers:
      - name: app
        image: nginx
`
	tests := []struct {
		name    string
		in      string
		code    int
		stderr  string // contained in stderr
		injects bool
	}{
		{"own container named minimesh-proxy", named, 1,
			`document 1 (line 1): pod "web": minimesh: spec.containers[1].name: "minimesh-proxy": the name of the minimesh sidecar, which this container (image "my/own-proxy") is not`, false},
		{"status annotation without the sidecar", status, 0,
			"deployment \"web\" injected\nWarning: minimesh: metadata.annotations[minimesh.io/status]: \"injected\" without minimesh's sidecar", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "in.yaml")
			if err := os.WriteFile(f, []byte(tt.in), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out, errOut := run("inject", "-f", f)
			if code != tt.code || !strings.Contains(errOut, tt.stderr) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, errOut, tt.code, tt.stderr)
			}
			if strings.Contains(errOut, "proxy environment added") {
				t.Fatalf("stderr %q: taken for an injected pod", errOut)
			}
			if !tt.injects {
				if out != "" {
					t.Fatalf("stdout of a refused stream:\n%s", out)
				}
				return
			}
			if n := strings.Count(out, "name: minimesh-proxy"); n != 1 || !strings.Contains(out, "HTTP_PROXY") {
				t.Fatalf("%d sidecars, want 1 and the proxy environment:\n%s", n, out)
			}
			again, errAgain, err := runStdin(out, "inject", "-f", "-")
			if err != nil || again != out || errAgain != "deployment \"web\" skipped: already injected\n" {
				t.Fatalf("injecting the output again: err %v, stderr %q, changed: %v", err, errAgain, again != out)
			}
		})
	}
}

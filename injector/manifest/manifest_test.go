package manifest

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/injector"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func testConfig() *injector.Config {
	cfg := injector.DefaultConfig()
	cfg.Proxy.Image = "ghcr.io/minimesh/minimesh:v0.0.0-test"
	return &cfg
}

func TestGolden(t *testing.T) {
	in, err := os.ReadFile("testdata/stream.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, events, err := Inject(in, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	var report strings.Builder
	for _, e := range events {
		report.WriteString(e.String() + "\n")
	}
	for name, got := range map[string][]byte{"stream.golden.yaml": out, "stream.events.golden": []byte(report.String())} {
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (go test ./injector/manifest -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs (go test ./injector/manifest -update rewrites it):\n%s", path, got)
		}
	}
}

// TestUntouchedBytes: every document that is not injected comes back
// exactly, comments, flow style and separators included.
func TestUntouchedBytes(t *testing.T) {
	in, _ := os.ReadFile("testdata/stream.yaml")
	out, _, err := Inject(in, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, keep := range []string{
		"# A mixed stream: workloads are injected, everything else is kept as written.\napiVersion: v1\nkind: Service\nmetadata:\n  name: web   # the front door\n",
		"data:\n  config.yaml: |\n    ---\n    mode: fast\n--- # a pod\n",
		"      hostNetwork: true\n      containers: [{name: agent, image: example/agent:1}]\n---\n",
		"      annotations: {minimesh.io/inject: disabled}\n",
		"---\n# comments only\n---\n",
	} {
		if !bytes.Contains(out, []byte(keep)) {
			t.Errorf("output lost %q", keep)
		}
	}
}

func TestCounts(t *testing.T) {
	in, _ := os.ReadFile("testdata/stream.yaml")
	out, events, err := Inject(in, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	injected := 0
	for _, e := range events {
		if e.Injected {
			injected++
		}
	}
	// Deployment, Pod, CronJob, Job, and the List's Deployment.
	if injected != 5 || len(events) != 7 {
		t.Fatalf("%d events, %d injected, want 7 and 5: %v", len(events), injected, events)
	}
	if n := bytes.Count(out, []byte("name: minimesh-proxy")); n != 5 {
		t.Fatalf("%d sidecars in the output, want 5", n)
	}
	if bytes.Contains(out, []byte("creationTimestamp")) || bytes.Contains(out, []byte("status: {}")) {
		t.Fatal("output carries empty creationTimestamp or status")
	}
}

// TestIdempotent: injecting the output again changes nothing.
func TestIdempotent(t *testing.T) {
	in, _ := os.ReadFile("testdata/stream.yaml")
	once, _, err := Inject(in, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	twice, events, err := Inject(once, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(once, twice) {
		t.Fatalf("second injection changed the stream:\n%s", twice)
	}
	for _, e := range events {
		if e.Injected {
			t.Fatalf("second injection injected %v", e)
		}
	}
}

func TestErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"apiVersion: v1\nkind: Service\n---\nkind: [\n", "document 2 (line 4)"},
		{"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {minimesh.io/proxy-cpu-limit: lots}\nspec: {containers: [{name: a}]}\n", `pod "p": minimesh: metadata.annotations[minimesh.io/proxy-cpu-limit]: "lots"`},
		{"apiVersion: apps/v1\nkind: Deployment\nspec: {replicas: many}\n", "Deployment"},
	}
	for _, tt := range tests {
		_, _, err := Inject([]byte(tt.in), testConfig())
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Inject(%q) = %v, want an error containing %q", tt.in, err, tt.want)
		}
	}
	var d *injector.DenyError
	_, _, err := Inject([]byte(tests[1].in), testConfig())
	if !errors.As(err, &d) {
		t.Errorf("a refused workload's error does not unwrap to *injector.DenyError: %v", err)
	}
}

// FuzzInject: no input panics; when there is no error, the output parses
// and injecting it again changes nothing.
func FuzzInject(f *testing.F) {
	in, _ := os.ReadFile("testdata/stream.yaml")
	f.Add(in)
	f.Add([]byte("---\n---\n"))
	f.Add([]byte(`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}]}`))
	f.Add([]byte("apiVersion: v1\nkind: Pod\nspec: {hostNetwork: true}\n"))
	cfg := testConfig()
	f.Fuzz(func(t *testing.T, in []byte) {
		out, _, err := Inject(in, cfg)
		if err != nil {
			return
		}
		again, _, err := Inject(out, cfg)
		if err != nil {
			t.Fatalf("output does not inject again: %v\n%s", err, out)
		}
		if !bytes.Equal(out, again) {
			t.Fatalf("not idempotent:\n%s\n----\n%s", out, again)
		}
	})
}

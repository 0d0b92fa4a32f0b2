package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/injector/check"
)

func TestPrintResults(t *testing.T) {
	var b bytes.Buffer
	n := printResults(&b, []check.Result{
		{Name: "webhook configuration exists"},
		{Name: "policies validate", Err: errors.New("a.yaml:1:2: x\nb.yaml:3:4: y"), Hint: "minimesh policy lint FILE"},
	})
	want := "✔ webhook configuration exists\n" +
		"✖ policies validate: a.yaml:1:2: x\n      b.yaml:3:4: y\n" +
		"    hint: minimesh policy lint FILE\n" +
		"\nStatus check results are ✖: 1 of 2 checks failed\n"
	if n != 1 || b.String() != want {
		t.Fatalf("%d failures, output:\n%s\nwant:\n%s", n, b.String(), want)
	}
}

// TestPrintResultsWarning: a warning is shown with its hint and does not
// fail the command.
func TestPrintResultsWarning(t *testing.T) {
	var b bytes.Buffer
	n := printResults(&b, []check.Result{
		{Name: "sidecars are ready"},
		{Name: "sidecars run the injector's images", Err: errors.New("1 sidecars of another image: shop/web"), Hint: "kubectl rollout restart", Warn: true},
	})
	want := "✔ sidecars are ready\n" +
		"‼ sidecars run the injector's images: 1 sidecars of another image: shop/web\n" +
		"    hint: kubectl rollout restart\n" +
		"\nStatus check results are ✔ (2 checks, 1 with a warning)\n"
	if n != 0 || b.String() != want {
		t.Fatalf("%d failures, output:\n%s\nwant:\n%s", n, b.String(), want)
	}
}

// TestCheckNoCluster: without a kubeconfig, check reports its first check
// failed, naming the files it read and with a hint (docs/install.md), not
// client-go's message about KUBERNETES_MASTER.
func TestCheckNoCluster(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nonexistent")
	empty := filepath.Join(t.TempDir(), "empty.kc")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not in a pod
	for _, tc := range []struct {
		name, env string
		args      []string
		want      string
	}{
		{"explicit", "", []string{"--kubeconfig", missing}, "stat " + missing + ": no such file or directory"},
		{"KUBECONFIG", missing, nil, "no kubeconfig: $KUBECONFIG names " + missing + ", missing or empty"},
		// The file given is named, not $KUBECONFIG's nor ~/.kube/config.
		{"explicit and empty", "", []string{"--kubeconfig", empty}, "no kubeconfig: " + empty + " (--kubeconfig) is empty"},
		{"explicit and empty, KUBECONFIG set", missing, []string{"--kubeconfig", empty}, "no kubeconfig: " + empty + " (--kubeconfig) is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KUBECONFIG", tc.env)
			code, out, errOut := run(append([]string{"check"}, tc.args...)...)
			want := "✖ Kubernetes API is reachable: kubernetes client config: " + tc.want
			if code != 1 || errOut != "" || !strings.HasPrefix(out, want) ||
				!strings.Contains(out, "\n    hint: pass --kubeconfig FILE or set KUBECONFIG") ||
				!strings.HasSuffix(out, "\nStatus check results are ✖: 1 of 1 checks failed\n") {
				t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s\nwant stdout beginning %q", code, out, errOut, want)
			}
		})
	}
}

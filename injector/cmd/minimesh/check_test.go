package main

import (
	"bytes"
	"errors"
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

func TestCheckNoCluster(t *testing.T) {
	code, _, errOut := run("check", "--kubeconfig", "/nonexistent/kubeconfig")
	if code != 1 || !strings.Contains(errOut, "/nonexistent/kubeconfig") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

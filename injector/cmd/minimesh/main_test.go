package main

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/minimesh/minimesh/wellknown"
)

func run(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = execute(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestVersion(t *testing.T) {
	code, out, errOut := run("version")
	if code != 0 || out != "minimesh "+wellknown.Version+"\n" || errOut != "" {
		t.Errorf("version: %d %q %q", code, out, errOut)
	}
}

func TestLintGood(t *testing.T) {
	code, out, errOut := run("policy", "lint", "testdata/good")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	if want := "3 policies OK (auth-service, nominatim-service, *)\n"; out != want {
		t.Errorf("stdout = %q, want %q", out, want)
	}
}

func TestLintBad(t *testing.T) {
	file := filepath.Join("testdata", "bad", "bad.yaml")
	code, out, errOut := run("policy", "lint", "testdata/good", file)
	want := file + `:6:12: spec.timeout: want a duration such as 2s or 500ms, got integer 2
` + file + `:8:15: spec.retries.attempts: must be between 0 and 10, got 20
` + file + `:9:20: spec.retries.retryOn[1]: unknown condition "teapot": want one of 5xx, gateway-error, connect-failure, reset, timeout, a status code 100-599 or a gRPC code (grpc-unavailable, …)
` + file + `:11:5: spec.circuitBreaker.halfOpen: unknown field "halfOpen" (allowed: consecutiveFailures, openTimeout, halfOpenRequests, failureRate, failOn)
`
	if code != 1 || out != "" || errOut != want {
		t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant:\n%s", code, out, errOut, want)
	}
}

func TestLintUnreadable(t *testing.T) {
	code, out, errOut := run("policy", "lint", "testdata/missing")
	if code != 1 || out != "" || errOut != "load testdata/missing: stat testdata/missing: no such file or directory\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestLintEmpty(t *testing.T) {
	code, out, _ := run("policy", "lint", t.TempDir())
	if code != 0 || out != "0 policies OK\n" {
		t.Errorf("exit %d, stdout %q", code, out)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"policy", "lint"}, {"version", "extra"}, {"nope"}, {"--bogus"}} {
		code, _, errOut := run(args...)
		if code != 1 || errOut == "" {
			t.Errorf("%q: exit %d, stderr %q", args, code, errOut)
		}
	}
}

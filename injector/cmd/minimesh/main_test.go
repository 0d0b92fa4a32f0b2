package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

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

// readmeSkipped is the line lint writes for the README beside the good
// policies: an entry it does not read.
const readmeSkipped = "skipped testdata/good/README.md: not .yaml, .yml or .json\n"

func TestLintGood(t *testing.T) {
	code, out, errOut := run("policy", "lint", "testdata/good")
	if code != 0 || errOut != readmeSkipped {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	if want := "3 policies OK (auth-service, nominatim-service, *)\n"; out != want {
		t.Errorf("stdout = %q, want %q", out, want)
	}
}

func TestLintBad(t *testing.T) {
	file := filepath.Join("testdata", "bad", "bad.yaml")
	code, out, errOut := run("policy", "lint", "testdata/good", file)
	want := readmeSkipped + file + `:6:12: spec.timeout: want a duration such as 2s or 500ms, got integer 2
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

// TestLintEmpty: a directory without a policy file fails, where "0
// policies OK" passed the wrong directory; a file without a policy in it
// is fine.
func TestLintEmpty(t *testing.T) {
	dir := t.TempDir()
	code, out, errOut := run("policy", "lint", dir)
	if code != 1 || out != "" || errOut != "lint: "+dir+" holds no policy file (.yaml, .yml or .json): a sidecar given it loads no policy\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	file := filepath.Join(dir, "none.yaml")
	if err := os.WriteFile(file, []byte("# none yet\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = run("policy", "lint", dir)
	if code != 0 || out != "0 policies OK\n" || errOut != "" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
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

// TestFlagUsagesHaveNoBackquotes: pflag takes backquoted text in a usage
// as the flag's argument name, so `--per-namespace` read in --help as a
// flag taking "minimesh controller --policy-dir".
func TestFlagUsagesHaveNoBackquotes(t *testing.T) {
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if strings.Contains(f.Usage, "`") {
				t.Errorf("%s --%s: usage has a backquote: %q", c.CommandPath(), f.Name, f.Usage)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd(io.Discard, io.Discard))
}

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runInitArgs(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"init"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// Bad values exit 2 with a message naming the flag (or variable) and the
// value, before anything runs.
func TestInitBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want []string
	}{
		{[]string{"--skip-outbound-ports", "80x"}, nil, []string{"-skip-outbound-ports", `"80x"`, "not a port"}},
		{[]string{"--skip-outbound-ports", "8100-8000"}, nil, []string{"-skip-outbound-ports", `"8100-8000"`, "first port is above its last"}},
		{[]string{"--skip-inbound-ports", "0"}, nil, []string{"-skip-inbound-ports", `"0"`}},
		{[]string{"--skip-outbound-cidrs", "10.0.0.0/8,10.0.0.300/32"}, nil, []string{"-skip-outbound-cidrs", `"10.0.0.300/32"`, "not a CIDR"}},
		{[]string{"--outbound-port", "70000"}, nil, []string{"-outbound-port", `"70000"`, "1-65535"}},
		{[]string{"--inbound-port", "0"}, nil, []string{"-inbound-port", `"0"`}},
		{[]string{"--admin-port", "0"}, nil, []string{"-admin-port", `"0"`, "1-65535"}},
		{[]string{"--proxy-uid", "0"}, nil, []string{"-proxy-uid", `"0"`, "root"}},
		{[]string{"--proxy-uid", "-1"}, nil, []string{"-proxy-uid", `"-1"`}},
		{[]string{"--backend", "iptables"}, nil, []string{"-backend", `"iptables"`, "auto, legacy, nft"}},
		{[]string{"--ipv6", "yes"}, nil, []string{"-ipv6", `"yes"`, "auto, on, off"}},
		{[]string{"--capture-inbound=maybe"}, nil, []string{"-capture-inbound", `"maybe"`}},
		{[]string{"--outbound-port", "15006"}, nil, []string{"--outbound-port 15006 and --inbound-port 15006"}},
		{[]string{"--nope"}, nil, []string{"-nope"}},
		{[]string{"extra"}, nil, []string{`unexpected argument "extra"`}},
		{nil, map[string]string{"MINIMESH_SKIP_OUTBOUND_CIDRS": "10.0.0.0"}, []string{`MINIMESH_SKIP_OUTBOUND_CIDRS="10.0.0.0"`, "not a CIDR"}},
		{nil, map[string]string{"MINIMESH_BACKEND": "NFT"}, []string{`MINIMESH_BACKEND="NFT"`}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := runInitArgs(t, append([]string{"--dry-run"}, tc.args...)...)
			if code != 2 {
				t.Errorf("exit %d, want 2; stdout %q", code, stdout)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q, want %q in it", stderr, w)
				}
			}
		})
	}
}

// --dry-run prints the restore input of each family, from flags and
// from the environment, and applies nothing (with an explicit back-end it
// runs no program at all).
func TestInitDryRun(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no iptables program to run
	t.Setenv("MINIMESH_SKIP_OUTBOUND_PORTS", "5432,8000-8100")
	t.Setenv("MINIMESH_CAPTURE_INBOUND", "true")
	t.Setenv("MINIMESH_IPV6", "on")
	code, stdout, stderr := runInitArgs(t, "--dry-run", "--backend", "legacy",
		"--skip-outbound-cidrs", "10.0.0.0/8,fd00::/8,198.18.250.7/32,2001:db8::1/128", "--skip-inbound-ports=9090,15020,30000-30010")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, w := range []string{
		"# minimesh-proxy init --dry-run: nothing applied\n",
		"# back-end legacy: --backend legacy\n",
		"# families IPv4 and IPv6: --ipv6 on\n",
		"# IPv4: iptables-legacy-restore --noflush\n",
		"# IPv6: ip6tables-legacy-restore --noflush\n",
	} {
		if !strings.Contains(stdout, w) {
			t.Errorf("want %q in\n%s", w, stdout)
		}
	}
	// The environment and the flags together are the golden "skips" config.
	for _, fam := range []string{"v4", "v6"} {
		want, err := os.ReadFile(filepath.Join("..", "..", "iptables", "testdata", "skips."+fam+".rules"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(stdout, string(want)) {
			t.Errorf("want proxy/iptables/testdata/skips.%s.rules in\n%s", fam, stdout)
		}
	}

	// A flag wins over its variable.
	code, stdout, _ = runInitArgs(t, "--dry-run", "--backend=nft", "--ipv6=off", "--skip-outbound-ports=")
	if code != 0 || strings.Contains(stdout, "5432") || strings.Contains(stdout, "IPv6:") || !strings.Contains(stdout, "# IPv4: iptables-nft-restore --noflush") {
		t.Errorf("exit %d:\n%s", code, stdout)
	}
}

// --admin-port is the port the inbound rules leave to the sidecar: a
// sidecar moved off 15020 (proxy.adminPort) leaves 15020 to the app, whose
// connections there are captured like any other port's. Without the flag
// (an init container injected before it existed) the admin port is 15020.
func TestInitAdminPort(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		env       map[string]string
		kept, not []string // inbound RETURN rules' ports there and not there
	}{
		{"default", nil, nil, []string{"15020"}, []string{"9901"}},
		{"flag", []string{"--admin-port=9901"}, nil, []string{"9901"}, []string{"15020"}},
		{"env", nil, map[string]string{"MINIMESH_ADMIN_PORT": "9901"}, []string{"9901"}, []string{"15020"}},
		// What an older injector wrote for proxy.adminPort 9901: both stay
		// skipped, as they were.
		{"older injector", []string{"--skip-inbound-ports=9901"}, nil, []string{"15020", "9901"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := runInitArgs(t, append([]string{"--dry-run", "--backend=legacy", "--ipv6=on", "--capture-inbound"}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			for _, fam := range []string{"IPv4", "IPv6"} {
				_, rules, _ := strings.Cut(stdout, "# "+fam+":")
				rules, _, _ = strings.Cut(rules, "COMMIT")
				for _, p := range tc.kept {
					if !strings.Contains(rules, "-A MINIMESH_INBOUND -p tcp -m tcp --dport "+p+" -j RETURN\n") {
						t.Errorf("%s: inbound port %s captured, want it skipped:\n%s", fam, p, rules)
					}
				}
				for _, p := range tc.not {
					if strings.Contains(rules, "--dport "+p+" ") {
						t.Errorf("%s: inbound port %s skipped, want it captured:\n%s", fam, p, rules)
					}
				}
			}
		})
	}
}

// When iptables fails, init fails (exit 1) and says which program failed
// and what it said. The programs on PATH come first (the sbin directories
// are searched only for names PATH lacks), so stand-ins that fail run on
// any machine, iptables installed or not.
func TestInitProgramFails(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"iptables-nft-save", "iptables-nft-restore"} {
		script := "#!/bin/sh\necho \"" + name + ": Permission denied (you must be root)\" >&2\nexit 4\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+":/usr/bin:/bin")
	code, _, stderr := runInitArgs(t, "--backend", "nft", "--ipv6", "off")
	if code != 1 || !strings.Contains(stderr, "iptables-nft-") || !strings.Contains(stderr, "Permission denied (you must be root)") {
		t.Errorf("exit %d: %s", code, stderr)
	}
}

func TestInitHelp(t *testing.T) {
	code, _, stderr := runInitArgs(t, "-h")
	if code != 0 {
		t.Errorf("exit %d", code)
	}
	for _, f := range []string{"-proxy-uid", "-outbound-port", "-inbound-port", "-capture-inbound", "-skip-outbound-ports",
		"-skip-outbound-cidrs", "-skip-inbound-ports", "-backend", "-ipv6", "-dry-run", "(default 15000)", "(default 15001)", "(default 15006)",
		"-admin-port", "(default 15020)"} {
		if !strings.Contains(stderr, f) {
			t.Errorf("help lacks %q:\n%s", f, stderr)
		}
	}
}

// --dry-run --backend auto where the back-end cannot be detected (no
// programs) still prints the rules, and every line it adds is a comment.
func TestInitDryRunUndetected(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("PATH", dir)
	if _, err := os.Stat("/usr/sbin/iptables-nft-save"); err == nil {
		// The sbin directories are searched too: stand in programs that
		// fail with a message of several lines, ahead of them on PATH.
		for _, name := range []string{"iptables-nft-save", "iptables-legacy-save"} {
			script := "#!/bin/sh\nprintf 'line one\\nline two\\n' >&2\nexit 1\n"
			if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	code, stdout, stderr := runInitArgs(t, "--dry-run", "--ipv6", "off")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "# back-end nft: not detected (neither back-end's programs work here") {
		t.Errorf("output:\n%s", stdout)
	}
	for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
		if !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "*nat") && !strings.HasPrefix(l, ":MINIMESH_") &&
			!strings.HasPrefix(l, "-A ") && l != "COMMIT" {
			t.Errorf("a line that is neither a rule nor a comment: %q", l)
		}
	}
}

// Package interception_test proves transparent interception with real
// parts: network namespaces made by the test as pods, the built
// minimesh-proxy init writing real iptables rules with both back-ends, and
// connections that go where the rules send them.
package interception_test

import (
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
)

// goldenFlags are the flags of minimesh-proxy init that make the
// configurations of proxy/iptables's golden files (rules_test.go,
// goldenConfigs).
var goldenFlags = map[string][]string{
	"outbound": nil,
	"inbound":  {"--capture-inbound"},
	"skips": {"--capture-inbound", "--skip-outbound-ports", "5432,8000-8100",
		"--skip-outbound-cidrs", "10.0.0.0/8,fd00::/8,198.18.250.7/32,2001:db8::1/128",
		"--skip-inbound-ports", "9090,15020,30000-30010"},
	"custom": {"--proxy-uid", "2102", "--outbound-port", "4140", "--inbound-port", "4143", "--admin-port", "4191",
		"--capture-inbound", "--skip-outbound-cidrs", "0.0.0.0/0"},
}

func other(backend string) string {
	if backend == "nft" {
		return "legacy"
	}
	return "nft"
}

// For each back-end and each golden configuration: iptables-save shows the
// golden file's rules in both families, the other back-end shows none, a
// second run leaves every table as the first did, and a run with other
// flags replaces the rules.
func TestIptablesRules(t *testing.T) {
	bin := needIPTables(t)
	for _, be := range backends {
		for _, name := range slices.Sorted(maps.Keys(goldenFlags)) {
			t.Run(be+"/"+name, func(t *testing.T) {
				ns := newNetns(t)
				args := append([]string{"--backend", be, "--ipv6", "on"}, goldenFlags[name]...)
				out := ns.minimeshInit(t, bin, args...)
				for _, w := range []string{"back-end " + be + " (--backend " + be + ")", "IPv4 rules in place", "IPv6 rules in place"} {
					if !strings.Contains(out, w) {
						t.Errorf("init's output lacks %q:\n%s", w, out)
					}
				}
				for fam, v6 := range map[string]bool{"v4": false, "v6": true} {
					got := minimeshLines(ns.save(t, be, v6))
					want := goldenLines(t, name+"."+fam+".rules")
					if !slices.Equal(got, want) {
						t.Errorf("%s-save %s shows:\n%s\nwant (proxy/iptables/testdata/%s.%s.rules):\n%s",
							be, fam, strings.Join(got, "\n"), name, fam, strings.Join(want, "\n"))
					}
					if l := minimeshLines(ns.save(t, other(be), v6)); len(l) > 0 {
						t.Errorf("the other back-end (%s) holds rules too: %q", other(be), l)
					}
				}
				first := ns.saveAll(t)
				ns.minimeshInit(t, bin, args...)
				if again := ns.saveAll(t); again != first {
					t.Errorf("a second run changed the tables:\n%s\nafter the first:\n%s", again, first)
				}

				// Run again with other flags: the rules are replaced, and
				// the inbound chain goes with --capture-inbound.
				ns.minimeshInit(t, bin, "--backend", be, "--ipv6", "on")
				for fam, v6 := range map[string]bool{"v4": false, "v6": true} {
					if got, want := minimeshLines(ns.save(t, be, v6)), goldenLines(t, "outbound."+fam+".rules"); !slices.Equal(got, want) {
						t.Errorf("%s after a run with the default flags: %q, want %q", fam, got, want)
					}
				}
			})
		}
	}
}

// --backend auto takes the back-end that holds rules in the namespace, and
// keeps to it on the next run; --ipv6 auto writes IPv6 rules only for a
// pod with a global IPv6 address (a link-local one does not count).
func TestIptablesAuto(t *testing.T) {
	bin := needIPTables(t)

	t.Run("fresh", func(t *testing.T) {
		ns := newNetns(t)
		// A veth pair inside the namespace: up, it has link-local IPv6
		// addresses only.
		ns.exec(t, "ip", "link", "add", "mm0", "type", "veth", "peer", "name", "mm1")
		ns.exec(t, "ip", "link", "set", "mm0", "up")
		ns.exec(t, "ip", "link", "set", "mm1", "up")
		ns.exec(t, "ip", "addr", "add", "198.18.251.2/24", "dev", "mm0")
		out := ns.minimeshInit(t, bin)
		be := ""
		for _, b := range backends {
			if strings.Contains(out, "back-end "+b+" (") {
				be = b
			}
		}
		if be == "" || !strings.Contains(out, "families IPv4 (--ipv6 auto: the pod has no IPv6 address beyond loopback and link-local)") {
			t.Fatalf("init's output:\n%s", out)
		}
		t.Logf("chosen in a fresh namespace: %s", out[:strings.Index(out, "\n")])
		if got := minimeshLines(ns.save(t, be, false)); !slices.Equal(got, goldenLines(t, "outbound.v4.rules")) {
			t.Errorf("%s IPv4 rules: %q", be, got)
		}
		for _, v6 := range []bool{false, true} {
			if l := minimeshLines(ns.save(t, other(be), v6)); len(l) > 0 {
				t.Errorf("the other back-end holds rules: %q", l)
			}
		}
		if l := minimeshLines(ns.save(t, be, true)); len(l) > 0 {
			t.Errorf("IPv6 rules without an IPv6 address: %q", l)
		}
		out = ns.minimeshInit(t, bin)
		if !strings.Contains(out, "back-end "+be+" ("+be+" holds minimesh's chains in this network namespace)") {
			t.Errorf("the second run's output:\n%s", out)
		}

		// A global IPv6 address: IPv6 rules too.
		ns.exec(t, "ip", "addr", "add", "fd6d:6d01::2/64", "dev", "mm0", "nodad")
		out = ns.minimeshInit(t, bin)
		if !strings.Contains(out, "families IPv4 and IPv6 (--ipv6 auto: the pod has fd6d:6d01::2)") {
			t.Errorf("init's output:\n%s", out)
		}
		if got := minimeshLines(ns.save(t, be, true)); !slices.Equal(got, goldenLines(t, "outbound.v6.rules")) {
			t.Errorf("%s IPv6 rules: %q", be, got)
		}
	})

	for _, be := range backends {
		t.Run("rules in "+be, func(t *testing.T) {
			ns := newNetns(t)
			cni := "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 198.18.251.0/24 -j ACCEPT\nCOMMIT\n"
			cmd := exec.Command(find(t, "ip"), "netns", "exec", ns.name, find(t, "iptables-"+be+"-restore"))
			cmd.Stdin = strings.NewReader(cni)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			out := ns.minimeshInit(t, bin)
			if !strings.Contains(out, "back-end "+be+" ("+be+" holds rules in this network namespace)") {
				t.Errorf("init's output:\n%s", out)
			}
			saved := ns.save(t, be, false)
			if !slices.Equal(minimeshLines(saved), goldenLines(t, "outbound.v4.rules")) || !strings.Contains(saved, "-A INPUT -s 198.18.251.0/24 -j ACCEPT") {
				t.Errorf("%s-save:\n%s", be, saved)
			}
		})
	}
}

// --dry-run prints the rules and changes nothing: not in a fresh namespace
// (iptables-legacy-save still shows no table at all), not over rules an
// earlier run left.
func TestIptablesDryRun(t *testing.T) {
	bin := needIPTables(t)
	golden := func(name string) string { return goldenFile(t, name) }
	ns := newNetns(t)
	before := ns.saveAll(t)
	args := append([]string{"--dry-run", "--ipv6", "on"}, goldenFlags["skips"]...)
	out := ns.minimeshInit(t, bin, args...)
	for _, w := range []string{"# minimesh-proxy init --dry-run: nothing applied\n", golden("skips.v4.rules"), golden("skips.v6.rules")} {
		if !strings.Contains(out, w) {
			t.Errorf("want %q in the output:\n%s", w, out)
		}
	}
	if after := ns.saveAll(t); after != before {
		t.Errorf("--dry-run changed the tables:\n%s\nbefore:\n%s", after, before)
	}
	if s := ns.save(t, "legacy", false); s != "" {
		t.Errorf("iptables-legacy-save after --dry-run in a fresh namespace:\n%s", s)
	}

	for _, be := range backends {
		ns.minimeshInit(t, bin, "--backend", be, "--ipv6", "on")
	}
	before = ns.saveAll(t)
	for _, be := range append(backends, "auto") {
		out := ns.minimeshInit(t, bin, append([]string{"--backend", be}, args...)...)
		if !strings.Contains(out, golden("skips.v4.rules")) {
			t.Errorf("--backend %s --dry-run:\n%s", be, out)
		}
	}
	if after := ns.saveAll(t); after != before {
		t.Errorf("--dry-run changed the tables:\n%s\nbefore:\n%s", after, before)
	}
}

// When the IPv6 rules fail after the IPv4 ones were applied, init exits 1
// with iptables' message and leaves IPv4 as it found it: no rules in a
// fresh namespace, an earlier run's rules unchanged; so does init
// terminated while ip6tables hangs. The failure is a stand-in
// ip6tables-*-restore ahead on PATH; everything else is real.
func TestIptablesRollback(t *testing.T) {
	bin := needIPTables(t)
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			fake := t.TempDir()
			script := "#!/bin/sh\necho \"ip6tables-restore v1.8.9 (" + be + "): simulated failure at line 3\" >&2\nexit 1\n"
			if err := os.WriteFile(filepath.Join(fake, "ip6tables-"+be+"-restore"), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			failing := func(ns *netns) (string, error) {
				cmd := exec.Command(find(t, "ip"), "netns", "exec", ns.name, bin, "init", "--backend", be, "--ipv6", "on", "--capture-inbound")
				cmd.Env = append(os.Environ(), "PATH="+fake+":"+os.Getenv("PATH")+":/usr/sbin:/sbin")
				out, err := cmd.CombinedOutput()
				return string(out), err
			}
			check := func(out string, err error) {
				t.Helper()
				ee, ok := err.(*exec.ExitError)
				if !ok || ee.ExitCode() != 1 {
					t.Fatalf("init with a failing ip6tables-%s-restore: %v\n%s", be, err, out)
				}
				for _, w := range []string{"applying the IPv6 rules: ip6tables-" + be + "-restore --noflush --wait=10: exit status 1: ip6tables-restore v1.8.9 (" + be + "): simulated failure at line 3",
					"(the IPv4 rules applied before were rolled back)"} {
					if !strings.Contains(out, w) {
						t.Errorf("want %q in:\n%s", w, out)
					}
				}
			}

			ns := newNetns(t)
			out, err := failing(ns)
			check(out, err)
			for _, b := range backends {
				for _, v6 := range []bool{false, true} {
					if l := minimeshLines(ns.save(t, b, v6)); len(l) > 0 {
						t.Errorf("%s ipv6=%v after the rollback: %q", b, v6, l)
					}
				}
			}

			// Over an earlier run's rules (outbound only), which must stay.
			ns.minimeshInit(t, bin, "--backend", be, "--ipv6", "on")
			before := ns.saveAll(t)
			out, err = failing(ns)
			check(out, err)
			if after := ns.saveAll(t); after != before {
				t.Errorf("after the rollback:\n%s\nbefore:\n%s", after, before)
			}

			// The pod deleted (SIGTERM) while ip6tables hangs: init's context
			// ends, and the rollback, which runs on a context of its own,
			// still removes IPv4's rules.
			hung := t.TempDir()
			script = "#!/bin/sh\nkill -TERM $PPID\nexec sleep 60\n"
			if err := os.WriteFile(filepath.Join(hung, "ip6tables-"+be+"-restore"), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			ns = newNetns(t)
			cmd := exec.Command(find(t, "ip"), "netns", "exec", ns.name, bin, "init", "--backend", be, "--ipv6", "on", "--capture-inbound")
			cmd.Env = append(os.Environ(), "PATH="+hung+":"+os.Getenv("PATH")+":/usr/sbin:/sbin")
			b, err := cmd.CombinedOutput()
			out = string(b)
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(out, "applying the IPv6 rules") ||
				!strings.Contains(out, "(the IPv4 rules applied before were rolled back)") {
				t.Errorf("init terminated while ip6tables-%s-restore hangs: %v\n%s", be, err, out)
			}
			if l := minimeshLines(ns.save(t, be, false)); len(l) > 0 {
				t.Errorf("%s IPv4 after the rollback on SIGTERM: %q", be, l)
			}
		})
	}
}

// The injected init container's privileges are enough: root with
// NET_ADMIN and NET_RAW only (the injector drops every other capability).
// Without root, init fails with iptables' own message.
func TestIptablesInitContainerPrivileges(t *testing.T) {
	bin := needIPTables(t)
	setpriv, err := tools.Find("setpriv")
	if err != nil {
		proc.Unmet(t, "%v", err)
	}
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			ns := newNetns(t)
			caps := "-all,+net_admin,+net_raw"
			out := ns.exec(t, setpriv, "--bounding-set="+caps, "--inh-caps="+caps, "--",
				bin, "init", "--backend", be, "--ipv6", "on", "--capture-inbound")
			if !strings.Contains(out, "IPv6 rules in place") {
				t.Errorf("init's output:\n%s", out)
			}
			for fam, v6 := range map[string]bool{"v4": false, "v6": true} {
				if got, want := minimeshLines(ns.save(t, be, v6)), goldenLines(t, "inbound."+fam+".rules"); !slices.Equal(got, want) {
					t.Errorf("%s %s: %q, want %q", be, fam, got, want)
				}
			}

			out, err := ns.execErr(t, setpriv, "--reuid=65532", "--regid=65532", "--clear-groups", "--", bin, "init", "--backend", be)
			if err == nil || !strings.Contains(err.Error(), "exit status 1") ||
				!strings.Contains(err.Error(), "minimesh-proxy init: reading the IPv4 rules: iptables-"+be+"-save: exit status") ||
				!strings.Contains(err.Error(), "Permission denied") {
				t.Errorf("init as 65532: %v\n%s", err, out)
			}
		})
	}
}

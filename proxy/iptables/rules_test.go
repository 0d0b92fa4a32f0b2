package iptables

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenConfigs are the configurations whose rules testdata/ holds, one
// file per family: NAME.v4.rules and NAME.v6.rules. e2e/interception
// applies the same configurations with the real programs (through
// minimesh-proxy init's flags: keep both in step) and compares
// iptables-save's output with these files.
func goldenConfigs() map[string]Config {
	withInbound := DefaultConfig()
	withInbound.CaptureInbound = true

	skips := DefaultConfig()
	skips.CaptureInbound = true
	skips.SkipOutboundPorts = []PortRange{{5432, 5432}, {8000, 8100}}
	skips.SkipOutboundCIDRs = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8"),
		netip.MustParsePrefix("198.18.250.7/32"), netip.MustParsePrefix("2001:db8::1/128"),
	}
	skips.SkipInboundPorts = []PortRange{{9090, 9090}, {15020, 15020}, {30000, 30010}}

	custom := DefaultConfig()
	custom.ProxyUID = 2102
	custom.OutboundPort = 4140
	custom.InboundPort = 4143
	custom.AdminPort = 4191
	custom.CaptureInbound = true
	custom.SkipOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}

	return map[string]Config{
		"outbound": DefaultConfig(),
		"inbound":  withInbound,
		"skips":    skips,
		"custom":   custom,
	}
}

func goldenPath(name string, f Family) string {
	return filepath.Join("testdata", name+map[Family]string{IPv4: ".v4", IPv6: ".v6"}[f]+".rules")
}

func TestRulesGolden(t *testing.T) {
	for name, c := range goldenConfigs() {
		for _, f := range []Family{IPv4, IPv6} {
			t.Run(name+"/"+f.String(), func(t *testing.T) {
				if err := c.Validate(); err != nil {
					t.Fatal(err)
				}
				got := Rules(c, f)
				path := goldenPath(name, f)
				if *update {
					if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (go test -update writes it)", err)
				}
				if got != string(want) {
					t.Errorf("Rules differ from %s (go test -update rewrites it):\n%s", path, got)
				}
				// The lines iptables-save shows afterwards are the
				// restore input's, in the same order.
				var fromGolden []string
				for _, l := range strings.Split(strings.TrimSpace(string(want)), "\n") {
					if strings.HasPrefix(l, ":") || strings.HasPrefix(l, "-A ") {
						fromGolden = append(fromGolden, l)
					}
				}
				if lines := Lines(c, f); !slices.Equal(lines, fromGolden) {
					t.Errorf("Lines = %q, golden file's = %q", lines, fromGolden)
				}
			})
		}
	}
}

func TestRulesContents(t *testing.T) {
	c := DefaultConfig()
	c.SkipOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("fe80::/10")}
	c.SkipOutboundPorts = []PortRange{{5432, 5432}, {5432, 5432}}
	v4, v6 := Rules(c, IPv4), Rules(c, IPv6)
	for _, tc := range []struct {
		rules, want, not string
	}{
		// IPv6 link-local cannot be redirected to ::1 (the kernel drops
		// it): it goes around the sidecar, right after loopback.
		{v6, "-A MINIMESH_OUTPUT -d ::1/128 -j RETURN\n-A MINIMESH_OUTPUT -d fe80::/10 -j RETURN\n-A MINIMESH_OUTPUT -d fd00::/8 -j RETURN\n", "MINIMESH_INBOUND"},
		{v4, "-A MINIMESH_OUTPUT -d 10.0.0.0/8 -j RETURN\n-A MINIMESH_OUTPUT -p tcp", "fe80::/10"},
		{v4, "-A MINIMESH_OUTPUT -d 10.0.0.0/8 -j RETURN\n", "fd00::/8"},
		{v6, "-A MINIMESH_OUTPUT -d fd00::/8 -j RETURN\n", "10.0.0.0/8"},
		{v4, "-A MINIMESH_OUTPUT -d 127.0.0.0/8 -j RETURN\n", "::1/128"},
		{v6, "-A MINIMESH_OUTPUT -d ::1/128 -j RETURN\n", "127.0.0.0/8"},
		{v4, "-A MINIMESH_OUTPUT -m owner --uid-owner 15000 -j RETURN\n", "MINIMESH_INBOUND"},
		{v6, "-A MINIMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n", "PREROUTING"},
	} {
		if !strings.Contains(tc.rules, tc.want) {
			t.Errorf("want %q in\n%s", tc.want, tc.rules)
		}
		if strings.Contains(tc.rules, tc.not) {
			t.Errorf("want no %q in\n%s", tc.not, tc.rules)
		}
	}
	if n := strings.Count(v4, "--dport 5432 "); n != 1 {
		t.Errorf("a port given twice gives %d rules, want 1:\n%s", n, v4)
	}
	if n := strings.Count(v6, "-d fe80::/10 "); n != 1 {
		t.Errorf("link-local skipped by default and by a CIDR gives %d rules, want 1:\n%s", n, v6)
	}
	// Inbound, the link-local address is captured like the others: the
	// sidecar dials it back with its zone (proxy/transparent).
	in := c
	in.CaptureInbound = true
	if r := Rules(in, IPv6); strings.Count(r, "fe80::/10") != 1 {
		t.Errorf("link-local in more than the outbound chain:\n%s", r)
	}
	// The loop guard comes before anything that could redirect.
	if i, j := strings.Index(v4, "--uid-owner"), strings.Index(v4, "REDIRECT"); i > j {
		t.Errorf("the UID rule comes after a REDIRECT:\n%s", v4)
	}
	// UDP is never matched by a REDIRECT.
	for _, l := range strings.Split(v4, "\n") {
		if strings.Contains(l, "REDIRECT") && !strings.Contains(l, "-p tcp") {
			t.Errorf("a REDIRECT that is not TCP-only: %q", l)
		}
	}
}

// saved is what iptables-save prints after the inbound golden config was
// applied next to someone else's rule.
const saved = `# Generated by iptables-save v1.8.9 on Tue Dec  1 17:06:45 2026
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j MINIMESH_NOT_NAT
COMMIT
*nat
:PREROUTING ACCEPT [3:180]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [7:420]
:POSTROUTING ACCEPT [7:420]
:CNI_CHAIN - [0:0]
:MINIMESH_INBOUND - [2:120]
:MINIMESH_OUTPUT - [0:0]
-A PREROUTING -p tcp -j MINIMESH_INBOUND
-A OUTPUT -p tcp -j MINIMESH_OUTPUT
-A OUTPUT -d 203.0.113.1/32 -j CNI_CHAIN
-A CNI_CHAIN -j MINIMESH_OUTPUT
-A MINIMESH_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A MINIMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
# Completed on Tue Dec  1 17:06:45 2026
`

func TestTransaction(t *testing.T) {
	c := DefaultConfig() // inbound capture now off
	got := Transaction(c, IPv4, saved)
	want := `*nat
:MINIMESH_OUTPUT - [0:0]
:MINIMESH_INBOUND - [0:0]
-D PREROUTING -p tcp -j MINIMESH_INBOUND
-D OUTPUT -p tcp -j MINIMESH_OUTPUT
-D CNI_CHAIN -j MINIMESH_OUTPUT
-X MINIMESH_INBOUND
-A OUTPUT -p tcp -j MINIMESH_OUTPUT
-A MINIMESH_OUTPUT -m owner --uid-owner 15000 -j RETURN
-A MINIMESH_OUTPUT -o lo -j RETURN
-A MINIMESH_OUTPUT -d 127.0.0.0/8 -j RETURN
-A MINIMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
`
	if got != want {
		t.Errorf("Transaction =\n%s\nwant\n%s", got, want)
	}
	// Nothing there yet: the transaction is the rules.
	for _, s := range []string{"", "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"} {
		if got := Transaction(c, IPv4, s); got != Rules(c, IPv4) {
			t.Errorf("Transaction on %q =\n%s\nwant Rules", s, got)
		}
	}
}

func TestOwned(t *testing.T) {
	want := []string{
		":MINIMESH_INBOUND - [0:0]",
		":MINIMESH_OUTPUT - [0:0]",
		"-A PREROUTING -p tcp -j MINIMESH_INBOUND",
		"-A OUTPUT -p tcp -j MINIMESH_OUTPUT",
		"-A CNI_CHAIN -j MINIMESH_OUTPUT",
		"-A MINIMESH_INBOUND -p tcp -j REDIRECT --to-ports 15006",
		"-A MINIMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
	}
	if got := Owned(saved); !slices.Equal(got, want) {
		t.Errorf("Owned =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := Owned(""); got != nil {
		t.Errorf("Owned(\"\") = %q", got)
	}
}

func TestRollbackInput(t *testing.T) {
	if got := rollbackInput(""); got != emptyNAT {
		t.Errorf("rollbackInput of no nat table = %q, want the empty table", got)
	}
	got := rollbackInput(saved)
	if !strings.HasPrefix(got, "*nat\n:PREROUTING ACCEPT [3:180]\n") || !strings.HasSuffix(got, "-A MINIMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n") ||
		strings.Contains(got, "*filter") || strings.Contains(got, "#") {
		t.Errorf("rollbackInput =\n%s", got)
	}
}

// TestInboundOnlyLocal: inbound capture redirects only what is addressed
// to the pod. The first rule of MINIMESH_INBOUND, in both families, returns
// a packet for any other destination before any REDIRECT: without it the
// sidecar relayed connections an attacker routed through the pod to any
// host (an open relay); returned, they meet the pod's ip_forward=0.
func TestInboundOnlyLocal(t *testing.T) {
	const local = "-A " + ChainInbound + " -m addrtype ! --dst-type LOCAL -j RETURN"
	for name, c := range goldenConfigs() {
		for _, f := range []Family{IPv4, IPv6} {
			var inbound []string
			for _, l := range Lines(c, f) {
				if strings.HasPrefix(l, "-A "+ChainInbound+" ") {
					inbound = append(inbound, l)
				}
			}
			if !c.CaptureInbound {
				if len(inbound) != 0 {
					t.Errorf("%s/%s: inbound rules without inbound capture: %q", name, f, inbound)
				}
				continue
			}
			if len(inbound) == 0 || inbound[0] != local {
				t.Errorf("%s/%s: MINIMESH_INBOUND = %q, want %q first", name, f, inbound, local)
			}
		}
	}
}

// Package iptables writes the rules of transparent interception, the work
// of `minimesh-proxy init` in a pod's init container (docs/interception.md).
//
// The core is pure: Rules turns a Config into iptables-restore input for one
// family, and Transaction turns it, with what iptables-save shows now, into
// the input that replaces minimesh's rules atomically and idempotently. The
// edges run the programs: Detect chooses the back-end (legacy or nft), Apply
// applies each family with one iptables-restore --noflush, reads the rules
// back, and rolls back the families already applied when a later one fails.
//
// Every rule lives in the nat table, in minimesh's own chains (MINIMESH_*),
// reached by one jump from each built-in chain used:
//
//	OUTPUT     -p tcp -j MINIMESH_OUTPUT    the pod's own connections
//	PREROUTING -p tcp -j MINIMESH_INBOUND   connections to the pod (CaptureInbound),
//	                                        only those addressed to a local address
package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Family is IPv4 (iptables) or IPv6 (ip6tables).
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// loopback is the family's loopback network, which outbound capture leaves
// alone (as it leaves everything that goes out of lo).
func (f Family) loopback() netip.Prefix {
	if f == IPv6 {
		return netip.MustParsePrefix("::1/128")
	}
	return netip.MustParsePrefix("127.0.0.0/8")
}

// linkLocal6 is IPv6's link-local unicast network (fe80::/10).
var linkLocal6 = netip.MustParsePrefix("fe80::/10")

func (f Family) has(p netip.Prefix) bool {
	return p.Addr().Is4() == (f == IPv4)
}

// minimesh's chains in the nat table. Everything named MINIMESH_ in that
// table is minimesh's: Transaction flushes such chains, and removes those
// it no longer uses together with every jump to them.
const (
	ChainPrefix   = "MINIMESH_"
	ChainOutbound = "MINIMESH_OUTPUT"
	ChainInbound  = "MINIMESH_INBOUND"
)

// ruleset is the nat table's part that is minimesh's, in the order and the
// spelling of iptables-save, so that what is read back compares line by
// line with what was written.
type ruleset struct {
	chains []string // declared, sorted as iptables-save sorts them
	rules  []string // "-A CHAIN ..." lines: the built-in chains' jumps first
}

func build(c Config, f Family) ruleset {
	var rs ruleset
	if c.CaptureInbound {
		rs.chains = append(rs.chains, ChainInbound)
	}
	rs.chains = append(rs.chains, ChainOutbound)
	slices.Sort(rs.chains)

	// iptables-save lists the built-in chains in this order, then the
	// others by name.
	if c.CaptureInbound {
		rs.add("PREROUTING", "-p tcp -j "+ChainInbound)
	}
	rs.add("OUTPUT", "-p tcp -j "+ChainOutbound)

	if c.CaptureInbound {
		// Only connections addressed to the pod itself: a packet for
		// another host that an attacker routes through the pod must not
		// be redirected, or the sidecar would relay it there (an open
		// relay and port scanner reaching the kube API, the cloud
		// metadata server, other namespaces). Returned, it meets the
		// pod's ip_forward=0 and is dropped, as Istio and Linkerd do.
		rs.add(ChainInbound, "-m addrtype ! --dst-type LOCAL -j RETURN")
		// The sidecar's own ports: the kubelet's probes and Prometheus
		// reach the admin port, and nothing arriving may be looped into
		// a listener through another one.
		var own []PortRange
		for _, p := range []uint16{c.OutboundPort, c.InboundPort, c.AdminPort} {
			own = append(own, PortRange{p, p})
		}
		for _, r := range uniq(append(own, c.SkipInboundPorts...)) {
			rs.add(ChainInbound, "-p tcp -m tcp --dport "+r.match()+" -j RETURN")
		}
		rs.add(ChainInbound, "-p tcp -j REDIRECT --to-ports "+strconv.Itoa(int(c.InboundPort)))
	}

	// The sidecar's own connections first: this is what prevents loops.
	rs.add(ChainOutbound, "-m owner --uid-owner "+strconv.FormatUint(uint64(c.ProxyUID), 10)+" -j RETURN")
	// Loopback, and everything routed out of lo, which includes the pod's
	// own addresses: an app calling itself reaches itself, as with
	// Linkerd's proxy-init.
	rs.add(ChainOutbound, "-o lo -j RETURN")
	skip := []netip.Prefix{f.loopback()}
	if f == IPv6 {
		// IPv6 link-local: a connection to fe80::…%eth0 that REDIRECT sent
		// to ::1 would carry its link-local source onto lo, where the
		// kernel drops every packet (Ip6InNoRoutes): the connect hung in
		// SYN-SENT, unlogged. It goes around the sidecar, as it does in a
		// pod without IPv6 rules (docs/interception.md).
		skip = append(skip, linkLocal6)
	}
	for _, p := range c.SkipOutboundCIDRs {
		if f.has(p) {
			skip = append(skip, p)
		}
	}
	for _, p := range uniq(skip) {
		rs.add(ChainOutbound, dest(p)+"-j RETURN")
	}
	for _, r := range uniq(c.SkipOutboundPorts) {
		rs.add(ChainOutbound, "-p tcp -m tcp --dport "+r.match()+" -j RETURN")
	}
	rs.add(ChainOutbound, "-p tcp -j REDIRECT --to-ports "+strconv.Itoa(int(c.OutboundPort)))
	return rs
}

// uniq is s without its repeated elements, in order (a list given twice,
// by flag and by environment, or a port that is also the sidecar's).
func uniq[T comparable](s []T) []T {
	var out []T
	for _, v := range s {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

func (rs *ruleset) add(chain, spec string) {
	rs.rules = append(rs.rules, "-A "+chain+" "+spec)
}

// dest is "-d CIDR " as iptables-save prints it: nothing for a /0, which
// matches every address.
func dest(p netip.Prefix) string {
	if p.Bits() == 0 {
		return ""
	}
	return "-d " + p.String() + " "
}

// Rules is c's interception for family f as iptables-restore input, to be
// applied with --noflush: the nat table, minimesh's chains declared (which
// creates them, or empties them when they exist), the jumps to them from
// OUTPUT (and PREROUTING), and each chain's rules. It is what --dry-run
// prints; Transaction adds what makes it idempotent.
func Rules(c Config, f Family) string {
	return render(build(c, f), nil, nil)
}

// Lines is the part of iptables-save's nat table that Rules(c, f) leaves
// behind: the chain declarations without counters, then the rules, in
// iptables-save's order. Owned of a save after applying equals it.
func Lines(c Config, f Family) []string {
	rs := build(c, f)
	var out []string
	for _, ch := range rs.chains {
		out = append(out, ":"+ch+" - [0:0]")
	}
	return append(out, rs.rules...)
}

func render(rs ruleset, deletes, stale []string) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, ch := range append(slices.Clip(rs.chains), stale...) {
		fmt.Fprintf(&b, ":%s - [0:0]\n", ch)
	}
	for _, d := range deletes {
		b.WriteString(d + "\n")
	}
	for _, ch := range stale {
		fmt.Fprintf(&b, "-X %s\n", ch)
	}
	for _, r := range rs.rules {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// Transaction is the iptables-restore --noflush input that takes the nat
// table from what saved (iptables-save's output, all tables or only nat)
// shows to c's rules in one commit: minimesh's chains are declared, which
// empties them; every jump to a MINIMESH_ chain from another chain is
// deleted before the jumps are added again, so that a second run leaves
// the same rules and not a second jump; MINIMESH_ chains that c no longer
// uses (the inbound chain after inbound capture was turned off) are
// removed. Other rules are left as they are.
func Transaction(c Config, f Family, saved string) string {
	rs := build(c, f)
	var deletes, stale []string
	for _, line := range natSection(saved) {
		switch {
		case strings.HasPrefix(line, ":"+ChainPrefix):
			ch, _, _ := strings.Cut(line[1:], " ")
			if !slices.Contains(rs.chains, ch) && !slices.Contains(stale, ch) {
				stale = append(stale, ch)
			}
		case strings.HasPrefix(line, "-A "):
			chain, target := ruleChain(line), ruleTarget(line)
			if strings.HasPrefix(target, ChainPrefix) && !strings.HasPrefix(chain, ChainPrefix) {
				deletes = append(deletes, "-D "+line[len("-A "):])
			}
		}
	}
	return render(rs, deletes, stale)
}

// Owned is minimesh's part of the nat table in saved (iptables-save's
// output): the MINIMESH_ chain declarations with their counters zeroed, the
// jumps to them, and their rules, in the order saved lists them.
func Owned(saved string) []string {
	var out []string
	for _, line := range natSection(saved) {
		switch {
		case strings.HasPrefix(line, ":"+ChainPrefix):
			ch, _, _ := strings.Cut(line[1:], " ")
			out = append(out, ":"+ch+" - [0:0]")
		case strings.HasPrefix(line, "-A "):
			if strings.HasPrefix(ruleChain(line), ChainPrefix) || strings.HasPrefix(ruleTarget(line), ChainPrefix) {
				out = append(out, line)
			}
		}
	}
	return out
}

// natSection is the lines of saved's *nat table, between "*nat" and its
// COMMIT, without comments; nil when saved has no nat table.
func natSection(saved string) []string {
	var out []string
	in := false
	for _, line := range strings.Split(saved, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "*nat":
			in = true
		case strings.HasPrefix(line, "*"):
			in = false
		case !in || line == "" || strings.HasPrefix(line, "#"):
		case line == "COMMIT":
			in = false
		default:
			out = append(out, line)
		}
	}
	return out
}

// ruleChain is CHAIN of "-A CHAIN ...".
func ruleChain(line string) string {
	f := strings.Fields(line)
	if len(f) < 2 {
		return ""
	}
	return f[1]
}

// ruleTarget is the target of a rule line (after -j or -g), "" if none.
func ruleTarget(line string) string {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" || f[i] == "--jump" || f[i] == "--goto" {
			return f[i+1]
		}
	}
	return ""
}

// emptyNAT is a nat table with nothing in it: what a rollback restores
// when the table was absent before (iptables-restore without --noflush
// empties the table's chains and removes its other chains).
const emptyNAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"

// rollbackInput is the iptables-restore input (without --noflush) that
// puts the nat table back as saved shows it.
func rollbackInput(saved string) string {
	lines := natSection(saved)
	if lines == nil {
		return emptyNAT
	}
	return "*nat\n" + strings.Join(lines, "\n") + "\nCOMMIT\n"
}

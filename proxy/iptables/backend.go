package iptables

import (
	"context"
	"fmt"
	"os"
	"strings"
)

// Backend is the kernel interface the iptables programs use: the legacy
// x_tables one (iptables-legacy) or nf_tables (iptables-nft). Rules of one
// are invisible to the other's tools, and both sets run, so a pod's netns
// should hold one kind only.
type Backend string

const (
	Legacy Backend = "legacy"
	NFT    Backend = "nft"
)

// Save is the program that prints family f's rules: iptables-nft-save,
// ip6tables-legacy-save, ...
func (b Backend) Save(f Family) string { return b.program(f, "save") }

// Restore is the program that applies family f's rules.
func (b Backend) Restore(f Family) string { return b.program(f, "restore") }

func (b Backend) program(f Family, verb string) string {
	base := "iptables"
	if f == IPv6 {
		base = "ip6tables"
	}
	return base + "-" + string(b) + "-" + verb
}

// Observation is what Choose decides from: each back-end's rules in the
// pod's network namespace, and the kernel's loaded modules.
type Observation struct {
	// Saved is each back-end's iptables-save and ip6tables-save output,
	// concatenated; a back-end whose IPv4 save program failed is absent and
	// its error is in Failed.
	Saved  map[Backend]string
	Failed map[Backend]error
	// Modules is /proc/modules ("" when it cannot be read, or the kernel
	// has no modules).
	Modules string
}

// Choose picks the back-end of a pod's network namespace, in this order:
//
//  1. the one that already holds minimesh's chains (an earlier run of init:
//     running again must replace those rules, not add a second set);
//  2. the one that holds any rules (a CNI plugin's, say), the way Istio's
//     istio-iptables decides; nft when both do;
//  3. the one whose NAT module the kernel has loaded (/proc/modules is the
//     node's, seen from the pod): nft_chain_nat for nft, iptable_nat for
//     legacy; nft when both are loaded;
//  4. nft, when its programs work here, else legacy: the fallback of
//     Kubernetes' iptables-wrappers, and the back-end of today's
//     distributions (Debian 10+, RHEL 8+). Linkerd's proxy-init does not
//     detect: it is told (proxyInit.iptablesMode, legacy by default).
//
// The reason says which step decided. The error, when neither back-end's
// programs work, holds both failures.
func Choose(o Observation) (Backend, string, error) {
	usable := func(b Backend) bool { _, ok := o.Saved[b]; return ok }
	if !usable(NFT) && !usable(Legacy) {
		return "", "", fmt.Errorf("neither back-end's programs work here: nft: %v; legacy: %v", o.Failed[NFT], o.Failed[Legacy])
	}
	pick := func(has func(string) bool, what string) (Backend, string, bool) {
		nft, legacy := usable(NFT) && has(o.Saved[NFT]), usable(Legacy) && has(o.Saved[Legacy])
		switch {
		case nft && legacy:
			return NFT, "both back-ends hold " + what + " in this network namespace; nft preferred", true
		case nft:
			return NFT, "nft holds " + what + " in this network namespace", true
		case legacy:
			return Legacy, "legacy holds " + what + " in this network namespace", true
		}
		return "", "", false
	}
	if b, why, ok := pick(func(s string) bool { return len(Owned(s)) > 0 }, "minimesh's chains"); ok {
		return b, why, nil
	}
	if b, why, ok := pick(hasRules, "rules"); ok {
		return b, why, nil
	}
	nftMod, legacyMod := hasModule(o.Modules, "nft_chain_nat"), hasModule(o.Modules, "iptable_nat")
	switch {
	case nftMod && usable(NFT):
		return NFT, "no rules here; the kernel has nft_chain_nat loaded", nil
	case legacyMod && usable(Legacy):
		return Legacy, "no rules here; the kernel has iptable_nat loaded and not nft_chain_nat", nil
	case usable(NFT):
		return NFT, "no rules here and no NAT module listed; nft is the default", nil
	}
	return Legacy, fmt.Sprintf("no rules here, and nft's programs fail (%v)", o.Failed[NFT]), nil
}

// hasRules reports whether an iptables-save output holds a rule or a chain
// of its own, beyond empty built-in chains.
func hasRules(saved string) bool {
	for _, line := range strings.Split(saved, "\n") {
		if strings.HasPrefix(line, "-A ") {
			return true
		}
		if strings.HasPrefix(line, ":") && strings.Contains(line, " - [") {
			return true // a user-defined chain (built-in ones have a policy)
		}
	}
	return false
}

func hasModule(modules, name string) bool {
	for _, line := range strings.Split(modules, "\n") {
		if f, _, _ := strings.Cut(line, " "); f == name {
			return true
		}
	}
	return false
}

// Detect observes the network namespace it runs in and Chooses. It only
// reads: the save programs without -t, which (unlike iptables-legacy-save
// -t nat) create no table.
func Detect(ctx context.Context, r Runner) (Backend, string, error) {
	o := Observation{Saved: map[Backend]string{}, Failed: map[Backend]error{}}
	for _, b := range []Backend{NFT, Legacy} {
		v4, err := r.Run(ctx, "", b.Save(IPv4))
		if err != nil {
			o.Failed[b] = err
			continue
		}
		// IPv6 may be off in the kernel; its rules only add evidence.
		v6, _ := r.Run(ctx, "", b.Save(IPv6))
		o.Saved[b] = v4 + v6
	}
	if m, err := os.ReadFile("/proc/modules"); err == nil {
		o.Modules = string(m)
	}
	return Choose(o)
}

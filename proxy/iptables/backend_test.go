package iptables

import (
	"errors"
	"strings"
	"testing"
)

func TestBackendPrograms(t *testing.T) {
	for _, tc := range []struct {
		b          Backend
		f          Family
		save, rest string
	}{
		{Legacy, IPv4, "iptables-legacy-save", "iptables-legacy-restore"},
		{Legacy, IPv6, "ip6tables-legacy-save", "ip6tables-legacy-restore"},
		{NFT, IPv4, "iptables-nft-save", "iptables-nft-restore"},
		{NFT, IPv6, "ip6tables-nft-save", "ip6tables-nft-restore"},
	} {
		if s, r := tc.b.Save(tc.f), tc.b.Restore(tc.f); s != tc.save || r != tc.rest {
			t.Errorf("%s %s: %s, %s", tc.b, tc.f, s, r)
		}
	}
}

func TestChoose(t *testing.T) {
	const (
		empty   = ""
		ours    = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:MINIMESH_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j MINIMESH_OUTPUT\nCOMMIT\n"
		cni     = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.0.0.0/8 -j ACCEPT\nCOMMIT\n"
		cniUser = "*mangle\n:PREROUTING ACCEPT [0:0]\n:CNI-X - [0:0]\nCOMMIT\n"
		bare    = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
		nftMods = "nft_chain_nat 16384 2 - Live 0x0000000000000000\nnf_tables 245760 3 nft_chain_nat, Live 0x0\n"
		legMods = "iptable_nat 16384 1 - Live 0x0\nip_tables 32768 1 iptable_nat, Live 0x0\n"
	)
	broken := errors.New("iptables-nft-save: exit status 1: Failed to initialize nft: Protocol not supported")
	for _, tc := range []struct {
		name         string
		nft, legacy  *string // nil: its programs fail
		modules      string
		want         Backend
		wantWhy, err string
	}{
		{"our chains in legacy win over rules in nft", ptr(cni), ptr(ours), "", Legacy, "legacy holds minimesh's chains", ""},
		{"our chains in nft", ptr(ours), ptr(empty), legMods, NFT, "nft holds minimesh's chains", ""},
		{"our chains in both", ptr(ours), ptr(ours), "", NFT, "both back-ends hold minimesh's chains", ""},
		{"a CNI's rules in legacy", ptr(empty), ptr(cni), nftMods, Legacy, "legacy holds rules", ""},
		{"a CNI's chain in legacy", ptr(bare), ptr(cniUser), "", Legacy, "legacy holds rules", ""},
		{"rules in both", ptr(cni), ptr(cni), "", NFT, "both back-ends hold rules", ""},
		{"empty built-in chains are no rules", ptr(empty), ptr(bare), nftMods, NFT, "nft_chain_nat loaded", ""},
		{"legacy module", ptr(empty), ptr(empty), legMods, Legacy, "iptable_nat loaded", ""},
		{"both modules", ptr(empty), ptr(empty), legMods + nftMods, NFT, "nft_chain_nat loaded", ""},
		{"legacy module, legacy broken", ptr(empty), nil, legMods, NFT, "nft is the default", ""},
		{"nothing: nft", ptr(empty), ptr(empty), "", NFT, "nft is the default", ""},
		{"nothing, nft broken", nil, ptr(empty), nftMods, Legacy, "nft's programs fail (iptables-nft-save", ""},
		{"both broken", nil, nil, "", "", "", "neither back-end's programs work here: nft: iptables-nft-save"},
	} {
		o := Observation{Saved: map[Backend]string{}, Failed: map[Backend]error{}, Modules: tc.modules}
		for b, s := range map[Backend]*string{NFT: tc.nft, Legacy: tc.legacy} {
			if s == nil {
				o.Failed[b] = broken
			} else {
				o.Saved[b] = *s
			}
		}
		b, why, err := Choose(o)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case b != tc.want || !strings.Contains(why, tc.wantWhy):
			t.Errorf("%s: %s (%s), want %s (%s)", tc.name, b, why, tc.want, tc.wantWhy)
		}
	}
}

func ptr(s string) *string { return &s }

package iptables

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// hangingTables is fakeTables whose listed calls hang until their
// context is done, as an iptables program that never returns does under
// Exec (killed when ctx ends); and, as Exec, a call on a context already
// done fails without running.
type hangingTables struct {
	*fakeTables
	hang      map[string]int // "program" (save) or "program --noflush" / "program rollback" (restore) → which call hangs, from 1
	seen      map[string]int
	rollbacks []string // restores without --noflush that ran: the rollbacks
}

func (h *hangingTables) Run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	call := name
	if strings.HasSuffix(name, "-restore") {
		if slices.Contains(args, "--noflush") {
			call += " --noflush"
		} else {
			call += " rollback"
		}
	}
	h.seen[call]++
	if n, ok := h.hang[call]; ok && n == h.seen[call] {
		<-ctx.Done()
		return "", fmt.Errorf("%s: signal: killed: %w", name, ctx.Err())
	}
	if strings.HasSuffix(call, " rollback") {
		h.rollbacks = append(h.rollbacks, name)
	}
	return h.fakeTables.Run(ctx, stdin, name, args...)
}

// TestApplyRollbackOutlivesCaller: when the caller's context ends while a
// family hangs (init's 2-minute bound expired, or SIGTERM), the families
// applied before are still rolled back, on a context of their own that
// the rollback's own bound ends. Before, the rollback ran on the caller's
// context, done by then: its restores failed at once and IPv4's rules
// stayed in the pod.
func TestApplyRollbackOutlivesCaller(t *testing.T) {
	const initBound = 2 * time.Minute // minimesh-proxy init's initTimeout
	for _, tc := range []struct {
		name      string
		hang      map[string]int
		sigterm   time.Duration // the caller cancels after this (0: its deadline ends it)
		rollbacks []string      // the rollback restores that completed, in order
		left      []Family      // families whose minimesh rules remain
		took      time.Duration
		wantErr   []string
		notErr    []string
	}{
		{
			name:      "ip6tables-restore hangs past the deadline",
			hang:      map[string]int{"ip6tables-nft-restore --noflush": 1},
			rollbacks: []string{"iptables-nft-restore"},
			took:      initBound,
			wantErr:   []string{"applying the IPv6 rules: ip6tables-nft-restore: signal: killed: context deadline exceeded", "(the IPv4 rules applied before were rolled back)"},
			notErr:    []string{"failed, they are still in place"},
		},
		{
			name:      "SIGTERM while ip6tables-restore hangs",
			hang:      map[string]int{"ip6tables-nft-restore --noflush": 1},
			sigterm:   30 * time.Second,
			rollbacks: []string{"iptables-nft-restore"},
			took:      30 * time.Second,
			wantErr:   []string{"applying the IPv6 rules", "context canceled", "(the IPv4 rules applied before were rolled back)"},
			notErr:    []string{"failed, they are still in place"},
		},
		{
			name:      "ip6tables-save hangs before IPv6 is applied",
			hang:      map[string]int{"ip6tables-nft-save": 1},
			rollbacks: []string{"iptables-nft-restore"},
			took:      initBound,
			wantErr:   []string{"reading the IPv6 rules: ip6tables-nft-save", "(the IPv4 rules applied before were rolled back)"},
		},
		{
			name:      "IPv6 read back hangs: both families rolled back, IPv6 first",
			hang:      map[string]int{"ip6tables-nft-save": 2},
			rollbacks: []string{"ip6tables-nft-restore", "iptables-nft-restore"},
			took:      initBound,
			wantErr:   []string{"reading the IPv6 rules back", "(the IPv4 and IPv6 rules applied before were rolled back)"},
		},
		{
			name:    "IPv4 restore hangs: nothing applied, nothing to roll back",
			hang:    map[string]int{"iptables-nft-restore --noflush": 1},
			took:    initBound,
			wantErr: []string{"applying the IPv4 rules", "context deadline exceeded"},
			notErr:  []string{"rolled back", "rolling back"},
		},
		{
			name:    "the rollback hangs too: cut off by its own bound",
			hang:    map[string]int{"ip6tables-nft-restore --noflush": 1, "iptables-nft-restore rollback": 1},
			left:    []Family{IPv4},
			took:    initBound + rollbackTimeout,
			wantErr: []string{"applying the IPv6 rules", "rolling back the IPv4 rules failed, they are still in place: iptables-nft-restore: signal: killed: context deadline exceeded"},
			notErr:  []string{"were rolled back"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := &hangingTables{fakeTables: newFakeTables(), hang: tc.hang, seen: map[string]int{}}
				ctx, cancel := context.WithTimeout(t.Context(), initBound)
				defer cancel()
				if tc.sigterm > 0 {
					time.AfterFunc(tc.sigterm, cancel)
				}
				start := time.Now()
				_, err := Apply(ctx, h, NFT, goldenConfigs()["skips"], []Family{IPv4, IPv6})
				if took := time.Since(start); took != tc.took {
					t.Errorf("Apply returned after %v, want %v", took, tc.took)
				}
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q, want %q in it", err, w)
					}
				}
				for _, w := range tc.notErr {
					if strings.Contains(err.Error(), w) {
						t.Errorf("error %q, want no %q in it", err, w)
					}
				}
				if !slices.Equal(h.rollbacks, tc.rollbacks) {
					t.Errorf("rollbacks run %q, want %q (calls %q)", h.rollbacks, tc.rollbacks, h.calls)
				}
				for _, f := range []Family{IPv4, IPv6} {
					prog := "iptables"
					if f == IPv6 {
						prog = "ip6tables"
					}
					got := Owned(h.table(prog).save())
					if want := slices.Contains(tc.left, f); want != (len(got) > 0) {
						t.Errorf("%s rules left: %q, want some: %v", f, got, want)
					}
				}
			})
		})
	}
}

package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Runner runs a program with stdin and returns its standard output. Its
// error says what ran and carries the program's own message (stderr).
type Runner interface {
	Run(ctx context.Context, stdin string, name string, args ...string) (string, error)
}

// Exec runs programs found on $PATH or in the sbin directories, where
// distributions keep iptables and an init container's PATH may not look.
type Exec struct{}

var sbinDirs = []string{"/usr/local/sbin", "/usr/sbin", "/sbin"}

func lookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	for _, d := range sbinDirs {
		if p, err := exec.LookPath(filepath.Join(d, name)); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in $PATH or %s", name, strings.Join(sbinDirs, ", "))
}

func (Exec) Run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	path, err := lookPath(name)
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		cmdline := strings.Join(append([]string{name}, args...), " ")
		if msg == "" {
			return stdout.String(), fmt.Errorf("%s: %w", cmdline, err)
		}
		return stdout.String(), fmt.Errorf("%s: %w: %s", cmdline, err, msg)
	}
	return stdout.String(), nil
}

// restoreArgs: keep the other rules (--noflush), and wait for the xtables
// lock rather than fail when another program holds it (legacy; nft
// accepts and ignores it).
var restoreArgs = []string{"--noflush", "--wait=10"}

// rollbackTimeout bounds a rollback, which runs when the caller's context
// may already be done (init's 2-minute bound expired while ip6tables
// hung, or SIGTERM): run on that context, its iptables-restore would be
// cancelled before it starts and leave the rules applied before in the
// pod. It is longer than restore's own --wait=10 for the xtables lock, so
// a rollback that waits for the lock is not cut off as it gets it
// (docs/interception.md).
const rollbackTimeout = 15 * time.Second

// Result is one family's rules as iptables-save shows them after Apply
// (Owned: minimesh's part of the nat table).
type Result struct {
	Family Family
	Rules  []string
}

// Apply puts c's rules in place for each family, in order, each with one
// iptables-restore --noflush (atomic: a family's rules are all applied or
// none are), then reads them back and checks them against Lines. When a
// family fails, the families applied before it are rolled back to what
// they held before, so that a failed init leaves no half of the rules
// behind; the error says which family and program failed, with the
// program's message, and whether the rollback failed too. The rollback
// outlives ctx (bounded by rollbackTimeout of its own): a caller whose
// deadline expired mid-way still gets its half of the rules removed.
func Apply(ctx context.Context, r Runner, b Backend, c Config, families []Family) ([]Result, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	type applied struct {
		f      Family
		before string
	}
	var done []applied
	fail := func(err error) ([]Result, error) {
		var rbErrs []error
		rbCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		for i := len(done) - 1; i >= 0; i-- {
			a := done[i]
			if _, e := r.Run(rbCtx, rollbackInput(a.before), b.Restore(a.f), "--wait=10"); e != nil {
				rbErrs = append(rbErrs, fmt.Errorf("rolling back the %s rules failed, they are still in place: %w", a.f, e))
			}
		}
		if len(done) > 0 && len(rbErrs) == 0 {
			var fams []string
			for _, a := range done {
				fams = append(fams, a.f.String())
			}
			err = fmt.Errorf("%w (the %s rules applied before were rolled back)", err, strings.Join(fams, " and "))
		}
		return nil, errors.Join(append([]error{err}, rbErrs...)...)
	}
	var results []Result
	for _, f := range families {
		before, err := r.Run(ctx, "", b.Save(f))
		if err != nil {
			return fail(fmt.Errorf("reading the %s rules: %w", f, err))
		}
		if _, err := r.Run(ctx, Transaction(c, f, before), b.Restore(f), restoreArgs...); err != nil {
			return fail(fmt.Errorf("applying the %s rules: %w", f, err))
		}
		done = append(done, applied{f, before})
		after, err := r.Run(ctx, "", b.Save(f))
		if err != nil {
			return fail(fmt.Errorf("reading the %s rules back: %w", f, err))
		}
		got := Owned(after)
		if err := check(got, Lines(c, f)); err != nil {
			return fail(fmt.Errorf("the %s rules read back with %s: %w", f, b.Save(f), err))
		}
		results = append(results, Result{Family: f, Rules: got})
	}
	return results, nil
}

// check compares the rules read back with those written. Spelling can
// differ between iptables versions, so it is not required to match; what
// is required: the same chains, the same number of rules in each, and the
// jumps from the built-in chains as written.
func check(got, want []string) error {
	shape := func(lines []string) (chains []string, rules map[string]int) {
		rules = map[string]int{}
		for _, l := range lines {
			if strings.HasPrefix(l, ":") {
				ch, _, _ := strings.Cut(l[1:], " ")
				chains = append(chains, ch)
			} else {
				rules[ruleChain(l)]++
			}
		}
		slices.Sort(chains)
		return chains, rules
	}
	gc, gr := shape(got)
	wc, wr := shape(want)
	switch {
	case !slices.Equal(gc, wc):
		return fmt.Errorf("chains %q, want %q; minimesh's rules there: %q", gc, wc, got)
	case !maps.Equal(gr, wr):
		return fmt.Errorf("rules per chain %v, want %v; minimesh's rules there: %q", gr, wr, got)
	}
	for _, l := range want {
		if !strings.HasPrefix(ruleChain(l), ChainPrefix) && strings.HasPrefix(l, "-A ") && !slices.Contains(got, l) {
			return fmt.Errorf("the jump %q is missing; minimesh's rules there: %q", l, got)
		}
	}
	return nil
}

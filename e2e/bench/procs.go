package main

import (
	"context"
	"os/exec"
	"strings"
	"sync"

	"github.com/minimesh/minimesh/e2e/internal/proc"
)

// procs are the long-running processes of the benchmark started so far
// (the upstream and the proxies); stopAll ends them all. Each one leads
// its own process group, so that stopping it also stops the workers it
// forks (nginx), and it dies with the harness (see package proc).
type procs struct {
	mu   sync.Mutex
	list []*proc.Proc
}

// start starts path with args in dir; env nil is the harness's own
// environment.
func (ps *procs) start(name, path string, args, env []string, dir string) (*proc.Proc, error) {
	return ps.startWith(name, path, args, proc.Options{Env: env, Dir: dir})
}

// startWith starts path with args and every option of proc.Start: a user
// and a network namespace to start in, say.
func (ps *procs) startWith(name, path string, args []string, opt proc.Options) (*proc.Proc, error) {
	p, err := proc.Start(name, path, args, opt)
	if err != nil {
		return nil, err
	}
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p, nil
}

// stopAll ends every process, newest first: SIGTERM to its process group,
// SIGKILL to whatever is left after a grace period.
func (ps *procs) stopAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i].Stop()
	}
}

// runCmd runs a short command and returns its combined output.
func runCmd(ctx context.Context, path string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

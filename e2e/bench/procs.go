package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a long-running process of the benchmark (the upstream or a
// proxy). It leads its own process group, so that stopping it also stops
// the workers it forks (nginx), and it dies with the harness.
type proc struct {
	name   string
	cmd    *exec.Cmd
	output *tailBuffer
	done   chan struct{}
	err    error // set before done is closed
}

// procs are the processes started so far; stopAll ends them all.
type procs struct {
	mu   sync.Mutex
	list []*proc
}

func (ps *procs) start(name, path string, args, env []string, dir string) (*proc, error) {
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	cmd.Env = env
	out := &tailBuffer{max: 64 << 10}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, output: out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
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
		list[i].stop()
	}
}

func (p *proc) stop() {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
	}
	// The leader may be gone while workers of its group are not.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
	for deadline := time.Now().Add(2 * time.Second); groupLive("/proc", pgid) > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
}

// groupLive counts the processes of group pgid that have not exited
// (zombies not counted).
func groupLive(procRoot string, pgid int) int {
	n := 0
	forGroup(procRoot, pgid, func(_ string, st procStat) {
		if st.state != "Z" && st.state != "X" {
			n++
		}
	})
	return n
}

// forGroup calls f for every process of group pgid.
func forGroup(procRoot string, pgid int, f func(dir string, st procStat)) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		dir := filepath.Join(procRoot, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		if st, err := parseStat(b); err == nil && st.pgrp == pgid {
			f(dir, st)
		}
	}
}

// exited reports, without blocking, whether the process has ended, and how.
func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// alive fails when the process has ended, with its last output.
func (p *proc) alive() error {
	if gone, err := p.exited(); gone {
		return fmt.Errorf("%s exited (%v); its last output:\n%s", p.name, err, p.output.String())
	}
	return nil
}

// usage is what a process group has used so far.
type usage struct {
	cpu     time.Duration // user + system time, summed over the group
	peakRSS int64         // bytes: VmHWM summed over the group
	procs   int
}

// usage reads /proc for every process in p's group (the leader and any
// workers it forked).
func (p *proc) usage() (usage, error) {
	return groupUsage("/proc", p.cmd.Process.Pid)
}

func groupUsage(procRoot string, pgid int) (usage, error) {
	var u usage
	forGroup(procRoot, pgid, func(dir string, st procStat) {
		if st.state == "Z" || st.state == "X" {
			return
		}
		u.procs++
		u.cpu += ticks(st.utime + st.stime)
		if b, err := os.ReadFile(filepath.Join(dir, "status")); err == nil {
			u.peakRSS += statusKB(b, "VmHWM") * 1024
		}
	})
	if u.procs == 0 {
		return u, fmt.Errorf("no live process in group %d", pgid)
	}
	return u, nil
}

type procStat struct {
	pid, ppid, pgrp int
	state           string
	utime, stime    uint64 // clock ticks
}

// parseStat parses /proc/PID/stat. The command name (field 2) may hold
// spaces and parentheses, so the fields are counted from its last ')'.
func parseStat(b []byte) (procStat, error) {
	var st procStat
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return st, errors.New("malformed stat")
	}
	var err error
	if st.pid, err = strconv.Atoi(strings.TrimSpace(s[:open])); err != nil {
		return st, fmt.Errorf("stat pid: %w", err)
	}
	f := strings.Fields(s[end+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return st, errors.New("short stat")
	}
	st.state = f[0]
	if st.ppid, err = strconv.Atoi(f[1]); err != nil {
		return st, err
	}
	if st.pgrp, err = strconv.Atoi(f[2]); err != nil {
		return st, err
	}
	if st.utime, err = strconv.ParseUint(f[11], 10, 64); err != nil {
		return st, err
	}
	if st.stime, err = strconv.ParseUint(f[12], 10, 64); err != nil {
		return st, err
	}
	return st, nil
}

// statusKB returns the value in kB of a "Key:   123 kB" line of
// /proc/PID/status, or 0.
func statusKB(b []byte, key string) int64 {
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != key {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			return 0
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		return n
	}
	return 0
}

// clkTck is USER_HZ, the unit of utime and stime.
var clkTck = func() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 100
}()

func ticks(n uint64) time.Duration {
	return time.Duration(int64(n) * int64(time.Second) / clkTck)
}

// freePort returns a loopback address with a port that was free a moment
// ago.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.buf))
}

// runCmd runs a short command and returns its combined output.
func runCmd(ctx context.Context, path string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

package proc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// This file reads /proc (or a copy of it, procRoot) for whole process
// groups: which members are live, and what they have used.

// GroupLive counts the processes of group pgid that have not exited
// (zombies not counted), reading procRoot (normally /proc).
func GroupLive(procRoot string, pgid int) int {
	n := 0
	forGroup(procRoot, pgid, func(_ string, st procStat) {
		if st.live() {
			n++
		}
	})
	return n
}

// Usage is what a process group has used so far.
type Usage struct {
	CPU     time.Duration // user + system time, summed over the group
	User    time.Duration // the user-mode part of CPU
	PeakRSS int64         // bytes: VmHWM summed over the group
	RSS     int64         // bytes: VmRSS (resident now) summed over the group
	Procs   int           // live processes in the group
	// Switches counts the context switches of every thread of the
	// group, voluntary (a wait) and not (preempted): per request, a
	// figure the machine's noise moves far less than CPU time.
	Switches int64
}

// Usage reads /proc for every live process in p's group (the leader and
// whatever it forked).
func (p *Proc) Usage() (Usage, error) { return GroupUsage("/proc", p.Pid()) }

// GroupUsage is the usage of the live processes of group pgid, read from
// procRoot; an error when there is none.
func GroupUsage(procRoot string, pgid int) (Usage, error) {
	var u Usage
	forGroup(procRoot, pgid, func(dir string, st procStat) {
		if !st.live() {
			return
		}
		u.Procs++
		u.CPU += ticks(st.utime + st.stime)
		u.User += ticks(st.utime)
		if b, err := os.ReadFile(filepath.Join(dir, "status")); err == nil {
			u.PeakRSS += statusNumber(b, "VmHWM") * 1024
			u.RSS += statusNumber(b, "VmRSS") * 1024
		}
		u.Switches += switches(dir)
	})
	if u.Procs == 0 {
		return u, fmt.Errorf("no live process in group %d", pgid)
	}
	return u, nil
}

// ResetPeak sets the peak RSS (VmHWM) of every live process in p's group
// back to what each holds now, so that the next Usage's PeakRSS is the
// peak since this call: the peak of one run, not of the process's life.
func (p *Proc) ResetPeak() error { return GroupResetPeak("/proc", p.Pid()) }

// GroupResetPeak writes 5 to /proc/PID/clear_refs of every live process of
// group pgid (Linux 4.0+, proc(5)), read from procRoot; an error when
// there is none or a write fails.
func GroupResetPeak(procRoot string, pgid int) error {
	n := 0
	var errs []error
	forGroup(procRoot, pgid, func(dir string, st procStat) {
		if !st.live() {
			return
		}
		n++
		if err := os.WriteFile(filepath.Join(dir, "clear_refs"), []byte("5"), 0); err != nil {
			errs = append(errs, fmt.Errorf("resetting the peak RSS of %d: %w", st.pid, err))
		}
	})
	if n == 0 {
		return fmt.Errorf("no live process in group %d", pgid)
	}
	return errors.Join(errs...)
}

// forGroup calls f for every process of group pgid, with its directory.
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

// procStat is what is read of /proc/PID/stat.
type procStat struct {
	pid, ppid, pgrp int
	state           string
	utime, stime    uint64 // clock ticks
}

// live: neither a zombie nor dead.
func (st procStat) live() bool { return st.state != "Z" && st.state != "X" }

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

// switches sums the context switches of the threads of the process at
// dir (its task/TID/status files: the process's own status counts only
// its main thread's). A thread that exits takes its count with it, where
// stat's CPU time keeps a dead thread's: a run in which a proxy's thread
// ends is undercounted. The proxies measured keep their threads (Go's
// runtime does not end its threads; nginx's and HAProxy's workers live
// as long as the server).
func switches(dir string) int64 {
	tasks, err := os.ReadDir(filepath.Join(dir, "task"))
	if err != nil {
		return 0
	}
	var n int64
	for _, task := range tasks {
		if b, err := os.ReadFile(filepath.Join(dir, "task", task.Name(), "status")); err == nil {
			n += statusNumber(b, "voluntary_ctxt_switches") + statusNumber(b, "nonvoluntary_ctxt_switches")
		}
	}
	return n
}

// statusNumber returns the number of a "Key:   123 kB" (a size, in kB)
// or "Key:\t123" (a count) line of /proc/PID/status, or 0.
func statusNumber(b []byte, key string) int64 {
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

// clkTck is USER_HZ, the unit of utime and stime, asked of getconf once,
// at the first use.
var clkTck = sync.OnceValue(func() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 100
})

// ticks is n clock ticks as a duration: the whole seconds first, so that
// the machine's totals (every core's ticks since boot, /proc/stat) do not
// overflow the nanoseconds' product.
func ticks(n uint64) time.Duration {
	hz := uint64(clkTck())
	return time.Duration(n/hz)*time.Second + time.Duration(n%hz)*time.Second/time.Duration(hz)
}

// Machine is the CPU time of every core of the machine so far, from the
// first line of /proc/stat: what a run of a benchmark kept busy, beside
// what it left idle. A load generator, an upstream and a proxy sharing
// the cores can leave some of them idle at their maximum rate, waiting on
// each other: then the rate follows the busy time per request, not one
// process's share of it.
type Machine struct {
	Busy time.Duration // user, nice, system, irq, softirq and steal time
	All  time.Duration // Busy and the idle and iowait time
}

// Sub is the time between m0 and m.
func (m Machine) Sub(m0 Machine) Machine { return Machine{m.Busy - m0.Busy, m.All - m0.All} }

// ReadMachine reads procRoot/stat (normally /proc/stat).
func ReadMachine(procRoot string) (Machine, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, "stat"))
	if err != nil {
		return Machine{}, err
	}
	return parseMachine(b)
}

// parseMachine reads the "cpu" line of /proc/stat: user nice system idle
// iowait irq softirq steal [guest guest_nice], in clock ticks (guest time
// is already in user time, and left out).
func parseMachine(b []byte) (Machine, error) {
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return Machine{}, fmt.Errorf("/proc/stat: first line %q is not the machine's cpu line", line)
	}
	var n [8]uint64
	for i := range n {
		v, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return Machine{}, fmt.Errorf("/proc/stat: cpu field %d: %w", i+1, err)
		}
		n[i] = v
	}
	busy := n[0] + n[1] + n[2] + n[5] + n[6] + n[7]
	return Machine{Busy: ticks(busy), All: ticks(busy + n[3] + n[4])}, nil
}

package proc

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/freeport"
)

func TestStopEndsTheGroup(t *testing.T) {
	// The shell forks a child into the same group and exits only on signal.
	p, err := Start("sh", "/bin/sh", []string{"-c", "sleep 60 & echo started; wait"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitReady(5*time.Second, func() error {
		if !strings.Contains(p.Output(), "started") {
			return errors.New("no output yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := GroupLive("/proc", p.Pid()); n < 2 {
		t.Fatalf("group %d has %d live processes, want the shell and sleep", p.Pid(), n)
	}
	if u, err := p.Usage(); err != nil || u.Procs < 2 || u.PeakRSS <= 0 {
		t.Errorf("Usage() = %+v, %v; want the shell and sleep, with their RSS", u, err)
	}
	p.Stop()
	if n := GroupLive("/proc", p.Pid()); n != 0 {
		t.Errorf("after Stop the group has %d live processes", n)
	}
	if u, err := p.Usage(); err == nil {
		t.Errorf("Usage() after Stop = %+v, want an error", u)
	}
	if gone, _ := p.Exited(); !gone {
		t.Error("Exited() = false after Stop")
	}
	p.Stop() // again: no effect, no hang
	p.Kill()
}

func TestKillAndAlive(t *testing.T) {
	p := StartT(t, "sleep", "/bin/sleep", []string{"60"}, Options{})
	if err := p.Alive(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.Kill()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Kill took %v", d)
	}
	if err := p.Alive(); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("Alive after Kill = %v", err)
	}
}

func TestWaitReadyFailsWhenTheProcessExits(t *testing.T) {
	p := StartT(t, "false", "/bin/sh", []string{"-c", "echo boom; exit 3"}, Options{})
	err := p.WaitReady(10*time.Second, func() error { return errors.New("never") })
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("WaitReady = %v, want the exit with the output", err)
	}
}

// TestPortTakenProcessExit: the exit of a process that says in its
// output that its port was taken counts as freeport.Taken, so that
// freeport.Start starts it again on other ports.
func TestPortTakenProcessExit(t *testing.T) {
	p := StartT(t, "taken", "/bin/sh", []string{"-c", "echo 'listen tcp 127.0.0.1:1: bind: address already in use'; exit 1"}, Options{})
	<-p.Done()
	if err := p.Alive(); !freeport.Taken(err) {
		t.Errorf("freeport.Taken(%v) = false for a process that exited on a port taken", err)
	}
}

func TestTailBuffer(t *testing.T) {
	b := &TailBuffer{Max: 4}
	b.Write([]byte("abc"))
	b.Write([]byte("defg"))
	if got := b.String(); got != "defg" {
		t.Errorf("String() = %q, want defg", got)
	}
}

func TestParseStat(t *testing.T) {
	// The command name may hold spaces and parentheses.
	line := "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 123 45 0 0 20 0 3 0 100 1000 200\n"
	st, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{pid: 4242, state: "S", ppid: 1, pgrp: 4242, utime: 123, stime: 45}
	if st != want {
		t.Errorf("parseStat = %+v, want %+v", st, want)
	}
	for _, bad := range []string{"", "12 (x", "12 (x) S 1 2"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q): no error", bad)
		}
	}
}

func TestStatusNumber(t *testing.T) {
	status := "Name:\tx\nVmPeak:\t  2000 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\nvoluntary_ctxt_switches:\t77\nnonvoluntary_ctxt_switches:\t5\n"
	if got := statusNumber([]byte(status), "VmHWM"); got != 1234 {
		t.Errorf("VmHWM = %d, want 1234", got)
	}
	if got := statusNumber([]byte(status), "voluntary_ctxt_switches"); got != 77 {
		t.Errorf("voluntary_ctxt_switches = %d, want 77 (not nonvoluntary's 5)", got)
	}
	if got := statusNumber([]byte(status), "VmSwap"); got != 0 {
		t.Errorf("VmSwap = %d, want 0", got)
	}
}

// fakeProc is a fake /proc: two live processes of group 4242 (the
// leader and a worker, two threads each), a zombie of it and another
// group's process.
func fakeProc(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for pid, stat := range map[string]string{
		"4242": "4242 (leader) S 1 4242 4242 0 -1 0 0 0 0 0 100 50 0 0 20 0 1 0 1 1 1\n",
		"4243": "4243 (worker) S 4242 4242 4242 0 -1 0 0 0 0 0 20 30 0 0 20 0 1 0 1 1 1\n",
		"4244": "4244 (dead) Z 4242 4242 4242 0 -1 0 0 0 0 0 999 999 0 0 20 0 1 0 1 1 1\n",
		"5000": "5000 (other) S 1 5000 5000 0 -1 0 0 0 0 0 999 999 0 0 20 0 1 0 1 1 1\n",
	} {
		dir := filepath.Join(root, pid)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "status"), []byte("VmHWM:\t 1000 kB\nVmRSS:\t 500 kB\nvoluntary_ctxt_switches:\t1000\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		// Two threads: the process's own status counts only the first's.
		for tid, status := range map[string]string{
			pid:       "voluntary_ctxt_switches:\t1000\nnonvoluntary_ctxt_switches:\t7\n",
			pid + "1": "voluntary_ctxt_switches:\t30\nnonvoluntary_ctxt_switches:\t3\n",
		} {
			if err := os.MkdirAll(filepath.Join(dir, "task", tid), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "task", tid, "status"), []byte(status), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

// TestGroupUsage reads fakeProc: two live processes of group 4242
// (their CPU summed, user time apart), a zombie and another group's
// process left out.
func TestGroupUsage(t *testing.T) {
	root := fakeProc(t)
	u, err := GroupUsage(root, 4242)
	if err != nil {
		t.Fatal(err)
	}
	if u.Procs != 2 || u.CPU != ticks(200) || u.User != ticks(120) || u.PeakRSS != 2000*1024 || u.RSS != 1000*1024 || u.Switches != 2*1040 {
		t.Errorf("GroupUsage = %+v, want 2 processes, CPU %v, user %v, 2,000 KiB peak, 1,000 KiB now, 2,080 switches", u, ticks(200), ticks(120))
	}
	if _, err := GroupUsage(root, 7); err == nil {
		t.Error("GroupUsage of a group with no process: no error")
	}
}

func TestParseMachine(t *testing.T) {
	stat := "cpu  100 5 40 800 20 3 2 30 7 0\ncpu0 50 2 20 400 10 1 1 15 3 0\nintr 1 2 3\n"
	m, err := parseMachine([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	// Busy: user, nice, system, irq, softirq, steal; guest (in user) not again.
	busy, all := ticks(100+5+40+3+2+30), ticks(100+5+40+800+20+3+2+30)
	if m.Busy != busy || m.All != all {
		t.Errorf("parseMachine = %+v, want busy %v of %v", m, busy, all)
	}
	if d := (Machine{Busy: 3 * busy, All: 2 * all}).Sub(m); d.Busy != 2*busy || d.All != all {
		t.Errorf("Sub = %+v", d)
	}
	// A machine of many cores long up: tick totals past 2⁶³ ns.
	big, err := parseMachine([]byte("cpu  20000000000 0 0 30000000000 0 0 0 0 0 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Duration(20000000000/clkTck()) * time.Second; big.Busy != want || big.All <= big.Busy {
		t.Errorf("2e10 busy ticks = %v, want %v (all %v)", big.Busy, want, big.All)
	}
	for _, bad := range []string{"", "intr 1 2 3\n", "cpu 1 2 3\n", "cpu 1 2 x 4 5 6 7 8\n"} {
		if _, err := parseMachine([]byte(bad)); err == nil {
			t.Errorf("parseMachine(%q): no error", bad)
		}
	}
}

// TestReadMachine reads this machine's /proc/stat: time went on, and some
// of it was busy (this test's own).
func TestReadMachine(t *testing.T) {
	m0, err := ReadMachine("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	m1, err := ReadMachine("/proc")
	if err != nil {
		t.Fatal(err)
	}
	if d := m1.Sub(m0); d.All <= 0 || d.Busy <= 0 || d.Busy > d.All {
		t.Errorf("50 ms of spinning: %+v", d)
	}
}

// TestResetPeak: a real process whose peak is far above what it holds now
// (a shell that held 30 MB in a variable and let it go) reads its peak
// as what it holds once reset.
func TestResetPeak(t *testing.T) {
	p := StartT(t, "sh", "/bin/sh", []string{"-c", `x=$(head -c 30000000 /dev/zero | tr '\0' a); unset x; echo ready; sleep 60`}, Options{})
	if err := p.WaitReady(10*time.Second, func() error {
		if !strings.Contains(p.Output(), "ready") {
			return errors.New("not ready yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	before, err := p.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if before.PeakRSS < 30e6 || before.RSS > before.PeakRSS/2 {
		t.Fatalf("before the reset: peak %d, now %d bytes; want a peak of 30 MB or more, twice what it holds", before.PeakRSS, before.RSS)
	}
	if err := p.ResetPeak(); err != nil {
		t.Fatal(err)
	}
	after, err := p.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if after.PeakRSS > 2*after.RSS || after.PeakRSS >= before.PeakRSS/2 {
		t.Errorf("after the reset: peak %d, now %d bytes (peak %d before); want the peak at what it holds", after.PeakRSS, after.RSS, before.PeakRSS)
	}
}

// TestGroupResetPeak: the live processes of the group are reset, the
// zombie and the other group are not.
func TestGroupResetPeak(t *testing.T) {
	root := fakeProc(t)
	if err := GroupResetPeak(root, 4242); err != nil {
		t.Fatal(err)
	}
	for pid, want := range map[string]string{"4242": "5", "4243": "5", "4244": "", "5000": ""} {
		b, _ := os.ReadFile(filepath.Join(root, pid, "clear_refs"))
		if string(b) != want {
			t.Errorf("%s/clear_refs = %q, want %q", pid, b, want)
		}
	}
	if err := GroupResetPeak(root, 6000); err == nil {
		t.Error("a group with no process: no error")
	}
}

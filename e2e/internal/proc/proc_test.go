package proc

import (
	"errors"
	"strings"
	"testing"
	"time"
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
	p.Stop()
	if n := GroupLive("/proc", p.Pid()); n != 0 {
		t.Errorf("after Stop the group has %d live processes", n)
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

func TestFreeAddrs(t *testing.T) {
	addrs, err := FreeAddrs(5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if !strings.HasPrefix(a, "127.0.0.1:") || seen[a] {
			t.Errorf("bad or repeated address %q in %v", a, addrs)
		}
		seen[a] = true
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

func TestStatGroup(t *testing.T) {
	state, pgrp, ok := statGroup([]byte("42 (a (weird) name) S 1 77 77 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0"))
	if !ok || state != "S" || pgrp != 77 {
		t.Errorf("statGroup = %q, %d, %v; want S, 77, true", state, pgrp, ok)
	}
}

package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMakeDemoStopsOnSIGTERM: `make demo` under a SIGTERM, to make (which
// forwards it to its child) or to make's child, stops the demo and its
// sidecar. With `go run ./demo` as the recipe, go run died and the demo,
// re-parented, ran on with its sidecar for the rest of the story.
func TestMakeDemoStopsOnSIGTERM(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("make is not installed")
		}
		t.Skip("make is not installed (set CI=true to make this a failure)")
	}
	root := moduleRootForTest(t)
	binDir := t.TempDir() // shared by the cases: the second build is up to date
	tests := []struct {
		name   string
		target func(t *testing.T, makePid int) int
	}{
		{"SIGTERM to make", func(_ *testing.T, makePid int) int { return makePid }},
		{"SIGTERM to make's child", childOf},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("make", "-C", root, "--no-print-directory", "demo", "BIN_DIR="+binDir)
			// Its own process group: what is left of it is what the
			// signal did not stop, and the cleanup ends only that.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			cmd.Env = withoutMake(os.Environ())
			// A pipe of the test's own, not cmd.StdoutPipe, which Wait
			// closes: a demo left running would then die of SIGPIPE at
			// its next line, which a terminal never sends it.
			stdout, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { stdout.Close() })
			cmd.Stdout, cmd.Stderr = w, w
			err = cmd.Start()
			w.Close()
			if err != nil {
				t.Fatal(err)
			}
			pgid := cmd.Process.Pid
			sidecar := make(chan int, 1)
			t.Cleanup(func() {
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				select {
				case pid := <-sidecar:
					_ = syscall.Kill(pid, syscall.SIGKILL)
				default:
				}
			})
			go scanSidecarPid(stdout, sidecar)

			var sidecarPid int
			select {
			case sidecarPid = <-sidecar:
				sidecar <- sidecarPid // for the cleanup
			case <-time.After(5 * time.Minute): // make build, then the demo's start
				t.Fatal("the demo never started its sidecar")
			}
			if err := syscall.Kill(tt.target(t, pgid), syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				t.Fatal("make did not exit after the SIGTERM")
			}
			// The demo stops its sidecar before it exits; the deadline
			// only keeps a failing test from hanging.
			deadline := time.Now().Add(20 * time.Second)
			for alive(-pgid) || alive(sidecarPid) {
				if time.Now().After(deadline) {
					t.Fatalf("after make exited, left running: %s", leftOver(pgid, sidecarPid))
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

var sidecarPidLine = regexp.MustCompile(`\(pid (\d+)\)`)

// scanSidecarPid sends the pid of the sidecar that the demo's intro
// names, then reads the output to its end so that the demo never blocks
// on a full pipe.
func scanSidecarPid(r interface{ Read([]byte) (int, error) }, pid chan<- int) {
	sc := bufio.NewScanner(r)
	sent := false
	for sc.Scan() {
		if m := sidecarPidLine.FindStringSubmatch(sc.Text()); m != nil && !sent {
			n, _ := strconv.Atoi(m[1])
			pid <- n
			sent = true
		}
	}
}

// childOf is make's one child: the recipe's shell, or what it exec'd.
func childOf(t *testing.T, makePid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(makePid) + "/task/" + strconv.Itoa(makePid) + "/children")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		t.Fatalf("make has children %q, want one", f)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// alive reports whether a process (or, negative, a process group) exists
// and is not a zombie waiting to be reaped by someone else.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	if errors.Is(err, syscall.ESRCH) {
		return false
	}
	if pid > 0 {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return false
		}
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && strings.HasPrefix(string(b[i:]), ") Z") {
			return false
		}
	}
	return true
}

// leftOver names the processes of the group and the sidecar, for the
// failure message.
func leftOver(pgid, sidecarPid int) string {
	out, err := exec.Command("ps", "-eo", "pid=,pgid=,args=").Output()
	if err != nil {
		return "(ps: " + err.Error() + ")"
	}
	var left []string
	for l := range strings.Lines(string(out)) {
		if f := strings.Fields(l); len(f) > 2 && (f[1] == strconv.Itoa(pgid) || f[0] == strconv.Itoa(sidecarPid)) {
			left = append(left, strings.TrimSpace(l))
		}
	}
	return "\n" + strings.Join(left, "\n")
}

// withoutMake drops the variables of an enclosing make (`make test`): its
// jobserver's descriptors are not this make's.
func withoutMake(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" {
			out = append(out, kv)
		}
	}
	return out
}

// Package proc runs the long-lived programs of the end-to-end tests (the
// sidecar, Jaeger, Prometheus, peers). Each one leads its own process group,
// so that stopping it also stops whatever it forks, and it is killed when
// the test binary dies (Pdeathsig), so that no run leaves daemons behind.
package proc

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/tools"
)

// Proc is a started program.
type Proc struct {
	Name string

	cmd    *exec.Cmd
	output *TailBuffer
	done   chan struct{}
	err    error // set before done is closed

	stopOnce sync.Once
}

// Options are the optional parts of Start.
type Options struct {
	Env []string // nil: the test's environment
	Dir string   // working directory; empty: the test's
	// OutputMax bounds the output kept for error messages (default 64 KiB).
	OutputMax int
	// Credential, when set, is the user and group the program runs as.
	Credential *syscall.Credential
	// Start, when set, starts the command instead of cmd.Start: to start
	// it from a thread inside a network namespace, say. The thread must
	// outlive the process (Pdeathsig is the thread's death).
	Start func(cmd *exec.Cmd) error
}

// Start starts path with args as the leader of a new process group.
func Start(name, path string, args []string, opt Options) (*Proc, error) {
	cmd := exec.Command(path, args...)
	cmd.Dir = opt.Dir
	cmd.Env = opt.Env
	max := opt.OutputMax
	if max <= 0 {
		max = 64 << 10
	}
	out := &TailBuffer{Max: max}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: opt.Credential}
	start := cmd.Start
	if opt.Start != nil {
		start = func() error { return opt.Start(cmd) }
	}
	if err := start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, output: out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// StartT is Start for a test: the process is stopped in t.Cleanup, and its
// last output is logged when the test has failed.
func StartT(t testing.TB, name, path string, args []string, opt Options) *Proc {
	t.Helper()
	p, err := Start(name, path, args, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop()
		if out := p.Output(); t.Failed() && out != "" {
			t.Logf("%s's last output:\n%s", name, out)
		}
	})
	return p
}

// Pid is the process id of the leader, which is also the process group id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the leader has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Output is the last output (stdout and stderr) of the process.
func (p *Proc) Output() string { return p.output.String() }

// Stop ends the process group: SIGTERM, then SIGKILL to whatever is left
// after a grace period of 3 s. It returns when the leader has been reaped
// and the group is gone (or 2 s more have passed). Stop may be called more
// than once, and after Kill.
func (p *Proc) Stop() { p.stop(syscall.SIGTERM, 3*time.Second) }

// Kill ends the process group with SIGKILL at once, like a crash.
func (p *Proc) Kill() { p.stop(syscall.SIGKILL, 0) }

func (p *Proc) stop(sig syscall.Signal, grace time.Duration) {
	p.stopOnce.Do(func() {
		pgid := p.Pid()
		_ = syscall.Kill(-pgid, sig)
		if grace > 0 {
			select {
			case <-p.done:
			case <-time.After(grace):
			}
		}
		// The leader may be gone while members of its group are not.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
		for deadline := time.Now().Add(2 * time.Second); GroupLive("/proc", pgid) > 0 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
	})
	<-p.done
}

// Exited reports, without blocking, whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Alive fails when the process has ended, with its last output.
func (p *Proc) Alive() error {
	if gone, err := p.Exited(); gone {
		return fmt.Errorf("%s exited (%v); its last output:\n%s", p.Name, err, p.Output())
	}
	return nil
}

// WaitReady polls check every 50 ms until it succeeds, the process exits
// or timeout passes; the error then names the last failure.
func (p *Proc) WaitReady(timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if aerr := p.Alive(); aerr != nil {
			return aerr
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w; its last output:\n%s", p.Name, timeout, err, p.Output())
		}
		select {
		case <-p.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// GetOK is a check for WaitReady: GET url answers 200 within 2 s.
func GetOK(url string) func() error {
	c := &http.Client{Timeout: 2 * time.Second}
	return func() error {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

// TailBuffer keeps the last Max bytes written to it.
type TailBuffer struct {
	Max int

	mu  sync.Mutex
	buf []byte
}

func (t *TailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.Max; t.Max > 0 && over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *TailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.buf))
}

// NeedTool returns the path of tool name (see tools.Find). When it is
// missing the test is skipped, except under CI=true, where a missing tool
// is a failure: CI runs `make tools` first.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := tools.Find(name)
	if err != nil {
		Unmet(t, "%s not installed: run make tools (%v)", name, err)
	}
	return p
}

// Unmet ends a test whose prerequisite (a tool, root, a built binary) is
// missing: skipped on a developer's machine, failed under CI=true, where
// everything a test needs must be there.
func Unmet(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

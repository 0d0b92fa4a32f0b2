package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
)

// standInEnv makes the test binary a stand-in for `minimesh-cluster run
// -dir DIR`: it waits for SIGTERM and exits 0, as run does once its
// cluster has stopped.
const standInEnv = "MINIMESH_CLUSTER_STAND_IN"

func TestMain(m *testing.M) {
	if os.Getenv(standInEnv) == "1" {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM)
		os.Stdout.WriteString("ready\n")
		<-c
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// standIn starts a stand-in whose command line is run's for dir; exited
// is closed once it has exited and been reaped (a zombie would still take
// signal 0).
func standIn(t *testing.T, dir string) (pid int, exited <-chan struct{}) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "run", "-dir", dir)
	cmd.Env = append(os.Environ(), standInEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Its SIGTERM handler is in place once it says ready.
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil || string(buf) != "ready\n" {
		t.Fatalf("stand-in: %q, %v", buf, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return cmd.Process.Pid, done
}

func writeState(t *testing.T, path, dir string, owner int) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"dir": dir, "owner": owner, "pids": map[string]int{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func stopped(exited <-chan struct{}) bool {
	select {
	case <-exited:
		return true
	case <-time.After(10 * time.Second):
		return false
	}
}

// TestDown: down stops the cluster's process from its pid file, or, with
// the pid file gone (make clean removed e2e/.work under a running
// cluster), from the state file's owner; it leaves alone a process that
// is not the cluster of its directory.
func TestDown(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pidFile bool   // the stand-in's pid in DIR/pid
		state   string // the state file's dir, relative to DIR's parent ("": no file)
		stops   bool
		wantErr string
	}{
		{name: "pid file", pidFile: true, stops: true},
		{name: "pid file gone, state file", state: "cluster/node", stops: true},
		{name: "pid file gone, demo's state file", state: "cluster/demo-node", stops: true},
		{name: "state file of another directory", state: "other/node", wantErr: "down -dir "},
		{name: "nothing", wantErr: "no cluster to stop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "cluster")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			stateFile := filepath.Join(root, "state.json")
			pid, exited := standIn(t, dir)
			if tc.pidFile {
				if err := os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if tc.state != "" {
				writeState(t, stateFile, filepath.Join(root, tc.state), pid)
			}
			err := down(dir, stateFile)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("down: %v, want an error with %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatalf("down: %v", err)
			}
			if tc.stops {
				if !stopped(exited) {
					t.Fatal("the cluster's process still runs after down")
				}
				if _, err := os.Stat(filepath.Join(dir, "pid")); !os.IsNotExist(err) {
					t.Errorf("pid file left: %v", err)
				}
				return
			}
			select {
			case <-exited:
				t.Fatal("down stopped a process that is not its cluster")
			default:
			}
		})
	}
}

// TestDownLeavesAnotherProcess: a pid file whose process does not have
// the directory in its arguments (a pid reused since) is not signalled.
func TestDownLeavesAnotherProcess(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "cluster")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pid, exited := standIn(t, filepath.Join(root, "elsewhere"))
	if err := os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := down(dir, filepath.Join(root, "state.json")); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("down: %v, want not running", err)
	}
	select {
	case <-exited:
		t.Fatal("down stopped a process that is not its cluster")
	default:
	}
}

// TestMakeClean: make clean stops a cluster-up cluster that runs from
// e2e/.work/cluster before removing the directory (it used to remove its
// data and pid file under it), and removes the directory whether or not
// one ran.
func TestMakeClean(t *testing.T) {
	mk, err := exec.LookPath("make")
	if err != nil {
		proc.Unmet(t, "make not installed: %v", err)
	}
	makefile, err := filepath.Abs("../../../../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "minimesh-cluster")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name    string
		running bool
		other   bool // the pid file names a process of another directory
		rel     bool // CLUSTER_DIR given relative, as a user may
	}{
		{"cluster runs", true, false, false},
		{"cluster runs, CLUSTER_DIR relative", true, false, true},
		{"no cluster", false, false, false},
		{"pid file of another process", false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// As make's $(CURDIR) names it.
			work, err := filepath.EvalSymlinks(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(work, "e2e", ".work", "cluster")
			if err := os.MkdirAll(filepath.Join(dir, "node", "etcd"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(bin, filepath.Join(dir, "minimesh-cluster")); err != nil {
				t.Fatal(err)
			}
			var exited <-chan struct{}
			if tc.running || tc.other {
				standInDir := dir
				if tc.other {
					standInDir = filepath.Join(work, "elsewhere")
				}
				var pid int
				pid, exited = standIn(t, standInDir)
				if err := os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			args := []string{"--no-print-directory", "-f", makefile, "-C", work, "clean"}
			if tc.rel {
				args = append(args, "CLUSTER_DIR=e2e/.work/cluster")
			}
			cmd := exec.Command(mk, args...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("make clean: %v\n%s", err, out)
			}
			if tc.running {
				if !stopped(exited) {
					t.Fatalf("make clean left the cluster running:\n%s", out)
				}
				if !strings.Contains(string(out), "cluster down") {
					t.Errorf("make clean did not stop the cluster with cluster-down:\n%s", out)
				}
			}
			if tc.other {
				select {
				case <-exited:
					t.Fatalf("make clean stopped a process that is not the cluster:\n%s", out)
				default:
				}
			}
			if _, err := os.Stat(filepath.Join(work, "e2e", ".work")); !os.IsNotExist(err) {
				t.Errorf("e2e/.work left: %v\n%s", err, out)
			}
		})
	}
}

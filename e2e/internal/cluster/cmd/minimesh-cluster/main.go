// Command minimesh-cluster runs the one-node cluster of e2e/internal/cluster
// for development (make cluster-up, make cluster-down):
//
//	minimesh-cluster up -dir DIR     start it in the background, with the
//	                                 minimesh image from bin/ imported, and
//	                                 return once the node is Ready
//	minimesh-cluster down -dir DIR   stop it and clean up the host
//	minimesh-cluster run -dir DIR    run it in the foreground until SIGINT
//	                                 or SIGTERM
//	minimesh-cluster demo -dir DIR   make demo's bakery story in a cluster of
//	                                 its own, with the chart installed;
//	                                 stops it at the end (make demo-cluster)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/cluster"
	"github.com/minimesh/minimesh/e2e/internal/clusterdemo"
	"github.com/minimesh/minimesh/e2e/internal/tools"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	dir := fs.String("dir", "e2e/.work/cluster", "the cluster's directory")
	_ = fs.Parse(os.Args[2:])
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fail(err)
	}
	switch os.Args[1] {
	case "run":
		err = run(abs)
	case "up":
		err = up(abs)
	case "down":
		err = down(abs, cluster.StateFile)
	case "demo":
		err = demo(abs)
	default:
		usage()
	}
	if err != nil {
		fail(err)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: minimesh-cluster up|down|run|demo [-dir DIR]")
	os.Exit(2)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "minimesh-cluster:", err)
	os.Exit(1)
}

func run(dir string) error {
	_ = os.Remove(filepath.Join(dir, "ready"))
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	c, err := cluster.Start(ctx, filepath.Join(dir, "node"), cluster.Options{Logf: logf})
	if err != nil {
		return err
	}
	if img, err := cluster.MinimeshImageOf(); err != nil {
		logf("no minimesh image: %v", err)
	} else if err := c.Import(ctx, img); err != nil {
		logf("import the minimesh image: %v", err)
	} else {
		logf("imported %s", cluster.MinimeshImage)
	}
	if img, err := cluster.MinimeshInitImageOf(); err != nil {
		logf("no minimesh init image (iptables interception): %v", err)
	} else if err := c.Import(ctx, img); err != nil {
		logf("import the minimesh init image: %v", err)
	} else {
		logf("imported %s", cluster.MinimeshInitImage)
	}
	_ = os.WriteFile(filepath.Join(dir, "ready"), []byte(c.Kubeconfig+"\n"), 0o644)
	logf("cluster ready: export KUBECONFIG=%s", c.Kubeconfig)
	<-ctx.Done()
	_ = os.Remove(filepath.Join(dir, "ready"))
	return c.Stop()
}

// demo brings a cluster up, installs the chart, plays the bakery story
// (e2e/internal/clusterdemo) and stops the cluster, whatever happened.
func demo(dir string) (err error) {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	helm, err := tools.Find("helm")
	if err != nil {
		return err
	}
	t0 := time.Now()
	c, err := cluster.Start(ctx, filepath.Join(dir, "demo-node"), cluster.Options{Logf: logf})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.Stop()) }()
	if err := c.ImportImages(ctx, dir); err != nil {
		return err
	}
	logf("cluster ready in %s; installing the chart", time.Since(t0).Round(time.Second))
	h := cluster.Helm{Path: helm, Kubeconfig: c.Kubeconfig, Home: filepath.Join(dir, "helm")}
	if out, err := h.InstallChart(ctx); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	rep, err := clusterdemo.Run(ctx, c, clusterdemo.Options{Out: os.Stdout})
	if err != nil {
		return err
	}
	if err := rep.Check(); err != nil {
		return fmt.Errorf("the story did not happen: %w", err)
	}
	fmt.Println("\nthe story happened: the breaker opened, answered at once without reaching Nominatim, and closed once it was back")
	return nil
}

func up(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if pid, err := readPID(dir); err == nil && syscall.Kill(pid, 0) == nil {
		return fmt.Errorf("a cluster runs already (pid %d): make cluster-down", pid)
	}
	// Its pid file gone with its directory, a cluster that runs still
	// holds the machine's lock: say whose it is rather than wait for it.
	if stDir, owner, err := cluster.ReadState(cluster.StateFile); err == nil && owner > 0 && isRun(owner, filepath.Dir(stDir)) {
		return fmt.Errorf("a cluster runs already (pid %d, %s): minimesh-cluster down -dir %s", owner, stDir, filepath.Dir(stDir))
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := filepath.Join(dir, "cluster.log")
	log, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer log.Close()
	_ = os.Remove(filepath.Join(dir, "ready"))
	cmd := exec.Command(self, "run", "-dir", dir)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for deadline := time.Now().Add(10 * time.Minute); time.Now().Before(deadline); {
		if b, err := os.ReadFile(filepath.Join(dir, "ready")); err == nil {
			fmt.Printf("cluster up (pid %d, log %s)\nexport KUBECONFIG=%s\n", cmd.Process.Pid, logPath, strings.TrimSpace(string(b)))
			return nil
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("the cluster did not start (%v):\n%s", err, out)
		case <-time.After(500 * time.Millisecond):
		}
	}
	return errors.New("the cluster did not get ready in 10 minutes; see " + logPath)
}

// down stops the cluster that runs from dir: the process in dir/pid, or,
// when that file is gone (its directory removed while the cluster ran),
// the one stateFile names, if its cluster's directory is in dir. Either is
// signalled only while its command line still names dir, so that a pid
// reused by another program is left alone.
func down(dir, stateFile string) error {
	pid, err := readPID(dir)
	if err != nil {
		var serr error
		if pid, serr = stateOwner(dir, stateFile); serr != nil {
			return fmt.Errorf("no cluster to stop in %s: %w; %w", dir, err, serr)
		}
	}
	if !isRun(pid, dir) {
		_ = os.Remove(filepath.Join(dir, "pid"))
		return fmt.Errorf("cluster (pid %d) not running", pid)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("cluster (pid %d) runs as another user (root?): %w; sudo make cluster-down", pid, err)
		}
		_ = os.Remove(filepath.Join(dir, "pid"))
		return fmt.Errorf("cluster (pid %d) not running: %w", pid, err)
	}
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if !isRun(pid, dir) {
			_ = os.Remove(filepath.Join(dir, "pid"))
			fmt.Println("cluster down")
			return nil
		}
	}
	return fmt.Errorf("cluster (pid %d) still running after 3 minutes", pid)
}

// stateOwner is the process that started the cluster stateFile describes,
// when that cluster's directory is in dir (run's node, or demo's).
func stateOwner(dir, stateFile string) (int, error) {
	stDir, owner, err := cluster.ReadState(stateFile)
	if err != nil {
		return 0, fmt.Errorf("no cluster state: %w", err)
	}
	if filepath.Dir(stDir) != dir {
		return 0, fmt.Errorf("the cluster of %s is %s's (minimesh-cluster down -dir %s)", stateFile, stDir, filepath.Dir(stDir))
	}
	if owner <= 0 {
		return 0, fmt.Errorf("%s names no process (written before it did): stop the process `minimesh-cluster run -dir %s` with SIGTERM", stateFile, dir)
	}
	return owner, nil
}

// isRun reports whether pid is a process that has dir as an argument, as
// run and demo have (-dir DIR, absolute); a zombie has no arguments.
func isRun(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	for _, arg := range strings.Split(string(b), "\x00") {
		if arg == dir {
			return true
		}
	}
	return false
}

func readPID(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

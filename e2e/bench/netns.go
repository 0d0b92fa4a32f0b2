package main

// The -transparent mode: a "pod" network namespace with the real
// `minimesh-proxy init` rules and the sidecar running in it as
// wellknown.ProxyUID, and a "peer" namespace across a veth pair that runs
// the upstream, as e2e/interception builds them (docs/interception.md).
// The load generator runs in the pod, so the veth hop is in every figure
// of the mode: direct (to a peer address the rules skip), explicit (to
// the sidecar's 127.0.0.1:15001, as through HTTP_PROXY) and transparent
// (to the upstream's address, redirected by iptables).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/wellknown"
)

// Addresses of the namespaces: 198.18.0.0/15, off the ranges the tests
// and the one-node cluster use (198.18.240.0/24, 198.19.240.0/24,
// 198.18.250.0/24, 198.18.251.0/24, 198.19.77.0/24). The namespaces are
// the harness's own, so these only have to be distinct from those to
// keep a reader of `ip netns` output from confusing them.
const (
	nsPodIP    = "198.19.31.2"
	nsPeerIP   = "198.19.31.1" // the upstream: redirected from the pod
	nsDirectIP = "198.19.31.7" // the upstream too, in --skip-outbound-cidrs: the direct baseline
	nsPrefixV4 = "/24"
	nsUpPort   = 8080
	nsPrefix   = "mm-bench-"
)

// Keys of the -transparent targets.
const (
	keyNetnsDirect      = "netns-direct"
	keyNetnsExplicit    = "netns-explicit"
	keyNetnsTransparent = "netns-transparent"
	newConnSuffix       = ":newconn"
)

// netnsKeys are the -transparent targets' keys in the report's order.
var netnsKeys = []string{keyNetnsDirect, keyNetnsExplicit, keyNetnsTransparent}

// netnsWorld is what -transparent made: remove undoes it.
type netnsWorld struct {
	ip        string // the ip program
	pod, peer string // namespace names
	stop      chan struct{}
	made      []string // namespaces made so far, for remove
	initOut   string   // minimesh-proxy init's output (back-end, rules read back)
}

// needTransparent says what -transparent lacks on this machine, or nil.
func needTransparent() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces, iptables, a sidecar under uid "+strconv.Itoa(wellknown.ProxyUID)+")")
	}
	for _, name := range []string{"ip", "iptables", "iptables-save", "iptables-restore"} {
		if _, err := tools.Find(name); err != nil {
			missing = append(missing, err.Error())
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("-transparent needs %s", strings.Join(missing, "; "))
	}
	return nil
}

// staleNs matches the namespaces of a harness run, with its process id.
var staleNs = regexp.MustCompile(`^` + nsPrefix + `(?:pod|peer)-(\d+)$`)

// removeStale removes the namespaces of harness runs that are no longer
// running (killed with SIGKILL, say, which leaves no chance to clean up).
func removeStale(ip string) {
	out, err := exec.Command(ip, "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := staleNs.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		if out, err := exec.Command(ip, "netns", "del", f[0]).CombinedOutput(); err != nil {
			logf("removing the stale namespace %s: %v: %s", f[0], err, out)
		} else {
			logf("removed the stale namespace %s of an earlier run (process %d is gone)", f[0], pid)
		}
	}
}

// newNetnsWorld makes the pod and peer namespaces, joins them with a veth
// pair and applies `minimesh-proxy init` in the pod, with the direct
// address in --skip-outbound-cidrs. On error it removes what it made.
func newNetnsWorld(ctx context.Context, sidecar string) (w *netnsWorld, err error) {
	ip, err := tools.Find("ip")
	if err != nil {
		return nil, err
	}
	removeStale(ip)
	pid := strconv.Itoa(os.Getpid())
	w = &netnsWorld{ip: ip, pod: nsPrefix + "pod-" + pid, peer: nsPrefix + "peer-" + pid, stop: make(chan struct{})}
	defer func() {
		if err != nil {
			w.remove()
			w = nil
		}
	}()
	ipc := func(args ...string) error {
		if out, err := exec.CommandContext(ctx, ip, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	for _, ns := range []string{w.pod, w.peer} {
		if err := ipc("netns", "add", ns); err != nil {
			return w, err
		}
		w.made = append(w.made, ns)
		if err := ipc("-n", ns, "link", "set", "lo", "up"); err != nil {
			return w, err
		}
	}
	for _, args := range [][]string{
		{"-n", w.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", w.peer},
		{"-n", w.pod, "addr", "add", nsPodIP + nsPrefixV4, "dev", "eth0"},
		{"-n", w.peer, "addr", "add", nsPeerIP + nsPrefixV4, "dev", "eth0"},
		{"-n", w.peer, "addr", "add", nsDirectIP + nsPrefixV4, "dev", "eth0"},
		{"-n", w.pod, "link", "set", "eth0", "up"},
		{"-n", w.peer, "link", "set", "eth0", "up"},
	} {
		if err := ipc(args...); err != nil {
			return w, err
		}
	}
	// The real rules, as the pod's init container writes them; the
	// direct baseline's address is skipped as a CIDR.
	out, err := exec.CommandContext(ctx, ip, "netns", "exec", w.pod, sidecar, "init",
		"--ipv6", "off", "--skip-outbound-cidrs", nsDirectIP+"/32").CombinedOutput()
	w.initOut = strings.TrimSpace(string(out))
	if err != nil {
		return w, fmt.Errorf("minimesh-proxy init in %s: %v\n%s", w.pod, err, w.initOut)
	}
	return w, nil
}

// backend is the first line of init's output: the iptables back-end and why.
func (w *netnsWorld) backend() string {
	line, _, _ := strings.Cut(w.initOut, "\n")
	return line
}

// remove releases the threads that started processes in the namespaces
// and deletes the namespaces. The processes must be stopped first; the
// veth pair goes with the namespaces. It may be called more than once.
func (w *netnsWorld) remove() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	for _, ns := range w.made {
		if out, err := exec.Command(w.ip, "netns", "del", ns).CombinedOutput(); err != nil {
			logf("ip netns del %s: %v: %s", ns, err, strings.TrimSpace(string(out)))
		}
	}
	w.made = nil
}

// startIn returns a proc.Options.Start that starts the command from a
// thread inside namespace name and keeps that thread (locked, parked)
// until w.stop is closed: the process's Pdeathsig fires when the thread
// that started it ends (e2e/interception's startIn).
func (w *netnsWorld) startIn(name string) func(*exec.Cmd) error {
	return func(cmd *exec.Cmd) error {
		errc := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
			fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				errc <- err
				return
			}
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
			if err == nil {
				err = cmd.Start()
			}
			errc <- err
			<-w.stop
		}()
		return <-errc
	}
}

// inNetns runs f on a thread inside the namespace, then returns the thread
// to the harness's namespace before releasing it; sockets f opens stay in
// the namespace.
func inNetns(name string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(self)
		fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		ferr := f()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread ends with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("setns back from %s: %w", name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// netnsClient is an HTTP client whose connections start in namespace name
// (so, from the pod, they are redirected like the app's). Like probe, it
// uses no proxy and no keep-alive.
func netnsClient(name string) *http.Client {
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = inNetns(name, func() error {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
}

// startNetnsTargets starts the upstream in the peer and the sidecar in the
// pod as wellknown.ProxyUID, and returns the -transparent targets: direct,
// explicit and transparent at the fixed rate, then the same three with a
// new connection per request at newConnQPS (none when 0).
func startNetnsTargets(ctx context.Context, ps *procs, w *netnsWorld, fortio, sidecar, dir string, o *options, fortioVersion string) ([]*target, error) {
	upstream := net.JoinHostPort(nsPeerIP, strconv.Itoa(nsUpPort))
	direct := net.JoinHostPort(nsDirectIP, strconv.Itoa(nsUpPort))
	podClient := netnsClient(w.pod)

	data := filepath.Join(dir, "upstream-netns")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, err
	}
	up, err := ps.startWith("upstream in the peer namespace (fortio server)", fortio,
		upstreamArgs(":"+strconv.Itoa(nsUpPort), data, o.bodySize),
		proc.Options{Env: cleanEnv(), Dir: dir, Start: w.startIn(w.peer)})
	if err != nil {
		return nil, err
	}
	if err := waitOKVia(ctx, podClient, up, "http://"+direct+"/", "", 10*time.Second); err != nil {
		return nil, err
	}

	policyDir := filepath.Join(dir, "policies-netns")
	if err := os.MkdirAll(policyDir, 0o755); err != nil {
		return nil, err
	}
	sc, err := startSidecarProc(ctx, ps, sidecar, dir, upstream, o, "", sidecarPlace{
		name:       "minimesh-proxy in the pod namespace",
		policyDir:  policyDir,
		out:        net.JoinHostPort("127.0.0.1", strconv.Itoa(wellknown.OutboundPort)),
		admin:      net.JoinHostPort("127.0.0.1", strconv.Itoa(wellknown.AdminPort)),
		client:     podClient,
		credential: &syscall.Credential{Uid: wellknown.ProxyUID, Gid: wellknown.ProxyUID},
		start:      w.startIn(w.pod),
	})
	if err != nil {
		return nil, err
	}
	rules := "the pod's rules: `minimesh-proxy init --ipv6 off --skip-outbound-cidrs " + nsDirectIP + "/32` (" + w.backend() + ")"
	base := []*target{
		{key: keyNetnsDirect, name: "direct (netns)", addr: direct, host: direct, netns: w.pod, client: podClient,
			base: keyDirect, version: "fortio " + fortioVersion,
			config: "no proxy: fortio in the pod namespace → veth → upstream at " + direct + ", an address in --skip-outbound-cidrs; " + rules},
		{key: keyNetnsExplicit, name: "minimesh explicit (netns)", addr: sc.addr, host: upstream, netns: w.pod, client: podClient,
			proc: sc.proc, admin: sc.admin, base: keyNetnsDirect, version: sc.version,
			config: "fortio in the pod namespace → the sidecar's " + sc.addr + " (loopback: not redirected), `Host: " + upstream + "` → veth → upstream; " +
				"the sidecar runs as uid " + strconv.Itoa(wellknown.ProxyUID) + ": " + sc.config},
		{key: keyNetnsTransparent, name: "minimesh transparent (netns)", addr: upstream, host: upstream, netns: w.pod, client: podClient,
			proc: sc.proc, admin: sc.admin, base: keyNetnsDirect, version: sc.version,
			config: "fortio in the pod namespace → " + upstream + ", redirected by the pod's rules to the same sidecar (SO_ORIGINAL_DST, protocol detection) → veth → upstream"},
	}
	for _, t := range base[1:] {
		if err := checkSidecar(ctx, t, t.host); err != nil {
			return nil, err
		}
	}
	// The baseline must not reach the sidecar: no request ID on its
	// answer.
	if resp, err := getVia(ctx, podClient, "http://"+direct+"/", ""); err != nil {
		return nil, fmt.Errorf("direct (netns): %w", err)
	} else if resp.StatusCode != 200 || resp.Header.Get(wellknown.HeaderRequestID) != "" {
		return nil, fmt.Errorf("direct (netns) to %s: %s, X-Request-ID %q: want 200 from the upstream itself, not through the sidecar",
			direct, resp.Status, resp.Header.Get(wellknown.HeaderRequestID))
	}
	targets := base
	if o.newConnQPS > 0 {
		for _, t := range base {
			n := *t
			n.key += newConnSuffix
			n.name = strings.TrimSuffix(t.name, ")") + fmt.Sprintf(", new connection per request at %s/s)",
				strconv.FormatFloat(o.newConnQPS, 'f', -1, 64))
			n.qps, n.newConn = o.newConnQPS, true
			if t.base != keyDirect {
				n.base = t.base + newConnSuffix
			} else {
				n.base = keyNetnsDirect
			}
			n.config = t.config + "; `-keepalive=false`: a new connection for every request"
			targets = append(targets, &n)
		}
	}
	return targets, nil
}

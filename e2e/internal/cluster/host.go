package cluster

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// hostState is what Start found on the host before it changed anything,
// and what it started: enough for cleanup to put the host back, also from
// another process after a crash (it is saved as JSON in stateDir).
type hostState struct {
	Dir         string            `json:"dir"`
	Sysctls     map[string]string `json:"sysctls"`
	Chains      map[string]bool   `json:"chains"`  // "iptables/nat/KUBE-SERVICES" that existed
	Existed     map[string]bool   `json:"existed"` // fixed paths that existed
	Netns       map[string]bool   `json:"netns"`   // /run/netns entries that existed
	PIDs        map[string]int    `json:"pids"`
	ProxyHealth string            `json:"proxyHealth"`
	// Owner is the process that called Start, whose SIGTERM stops the
	// cluster (minimesh-cluster run): minimesh-cluster down finds it here
	// when the pid file in its directory is gone.
	Owner int `json:"owner"`
}

// StateFile is where a cluster keeps its state from Start to Stop (one
// that died without Stop leaves it for the next Start to clean up after).
const StateFile = stateDir + "/state.json"

// ReadState reads a state file such as StateFile: the directory of the
// cluster it describes and the process that started it (0 in a file
// written before the owner was recorded).
func ReadState(path string) (dir string, owner int, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", 0, err
	}
	var st hostState
	if err := json.Unmarshal(b, &st); err != nil {
		return "", 0, fmt.Errorf("%s: %w", path, err)
	}
	return st.Dir, st.Owner, nil
}

// sysctls that the kubelet, kube-proxy and the bridge plugin may change.
var sysctls = []string{
	"net/ipv4/ip_forward",
	"net/ipv6/conf/all/forwarding",
	"net/ipv4/conf/all/route_localnet",
	"net/bridge/bridge-nf-call-iptables",
	"net/bridge/bridge-nf-call-ip6tables",
	"net/netfilter/nf_conntrack_max",
	"net/netfilter/nf_conntrack_tcp_timeout_established",
	"net/netfilter/nf_conntrack_tcp_timeout_close_wait",
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
}

// fixedPaths are written by containerd 1.6, the CNI plugins and the
// kubelet whatever their configuration says.
var fixedPaths = []string{
	"/run/containerd", "/var/lib/cni", "/var/lib/kubelet", "/var/log/pods", "/var/log/containers",
	"/run/netns", "/var/lib/containerd", "/etc/cni",
}

// sharedPaths are removed only when empty.
var sharedPaths = map[string]bool{"/run/netns": true, "/etc/cni": true}

var iptablesTables = []string{"filter", "nat", "mangle"}

func snapshotHost(dir string) (*hostState, error) {
	st := &hostState{Dir: dir, Sysctls: map[string]string{}, Chains: map[string]bool{},
		Existed: map[string]bool{}, Netns: map[string]bool{}, PIDs: map[string]int{}, Owner: os.Getpid()}
	for _, s := range sysctls {
		if b, err := os.ReadFile("/proc/sys/" + s); err == nil {
			st.Sysctls[s] = strings.TrimSpace(string(b))
		}
	}
	for _, p := range fixedPaths {
		if _, err := os.Lstat(p); err == nil {
			st.Existed[p] = true
		}
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			st.Netns[e.Name()] = true
		}
	}
	for _, bin := range []string{"iptables", "ip6tables"} {
		for _, table := range iptablesTables {
			chains, err := listChains(bin, table)
			if err != nil {
				continue // no ip6tables, say
			}
			for _, ch := range chains {
				st.Chains[bin+"/"+table+"/"+ch] = true
			}
		}
	}
	if _, err := exec.Command("ip", "link", "show", Bridge).CombinedOutput(); err == nil {
		return nil, fmt.Errorf("a bridge %s exists already: another cluster, or one that was not cleaned up (ip link del %s)", Bridge, Bridge)
	}
	return st, nil
}

func (st *hostState) addPID(name string, pid int) { st.PIDs[name] = pid }

func (st *hostState) save() error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(stateDir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(stateDir, "state.json"))
}

func loadState() (*hostState, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st := &hostState{}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, err
	}
	return st, nil
}

// cleanup undoes what a cluster did to the host. It goes on after errors
// and returns them all.
func (st *hostState) cleanup(kubeProxy string) []error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	// Processes that a crash left: the ones started (by PID, when still
	// the same program), the containers (by cgroup), the shims of our
	// containerd (by its socket in their command line).
	for name, pid := range st.PIDs {
		if cmdline(pid) != "" && strings.Contains(exeOf(pid), name) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	add(killCgroup("kubepods"))
	// Every process whose command line names the cluster's directory:
	// etcd, kube-apiserver, the containerd shims (by its socket).
	for _, pid := range ownPIDs(st.Dir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	add(unmountUnder(st))
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if !st.Netns[e.Name()] && strings.HasPrefix(e.Name(), "cni-") {
				p := filepath.Join("/run/netns", e.Name())
				_ = syscall.Unmount(p, syscall.MNT_DETACH)
				add(os.Remove(p))
			}
		}
	}
	if out, err := exec.Command("ip", "link", "del", Bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
		add(fmt.Errorf("ip link del %s: %v: %s", Bridge, err, out))
	}
	if kubeProxy != "" {
		// kube-proxy removes its own rules (iptables, ipvs, nftables).
		_ = exec.Command(kubeProxy, "--cleanup").Run()
	}
	add(st.removeChains())
	for s, v := range st.Sysctls {
		p := "/proc/sys/" + s
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) != v {
			add(os.WriteFile(p, []byte(v), 0o644))
		}
	}
	add(removeCgroups("kubepods"))
	for _, p := range fixedPaths {
		if st.Existed[p] {
			continue
		}
		if sharedPaths[p] {
			_ = os.Remove(p) // only when empty: others make network namespaces too
		} else {
			add(os.RemoveAll(p))
		}
	}
	add(os.Remove(filepath.Join(stateDir, "state.json")))
	return errs
}

// pids lists the processes of the machine.
func pids() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// ownPIDs are the processes, other than this one, whose command line
// names dir (a cluster's directory).
func ownPIDs(dir string) []int {
	var out []int
	for _, pid := range pids() {
		if pid != os.Getpid() && strings.Contains(cmdline(pid), dir+"/") {
			out = append(out, pid)
		}
	}
	return out
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(string(b), "\x00", " ")
}

func exeOf(pid int) string {
	p, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return p
}

// cgroupHierarchies are the cgroup v1 hierarchies (and the v2 one, if
// mounted) where the kubelet makes its /kubepods tree.
func cgroupHierarchies() []string {
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.procs"); err == nil {
		out = append(out, "/sys/fs/cgroup")
	}
	return out
}

// killCgroup kills every process in the cgroup subtree name of any
// hierarchy, until none is left (5 s at most).
func killCgroup(name string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := 0
		for _, h := range cgroupHierarchies() {
			root := filepath.Join(h, name)
			_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
						_ = syscall.Kill(pid, syscall.SIGKILL)
						left++
					}
				}
				return nil
			})
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d processes left in the %s cgroups", left, name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeCgroups removes the cgroup subtree name of every hierarchy,
// deepest first.
func removeCgroups(name string) error {
	var errs []error
	for _, h := range cgroupHierarchies() {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, name), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			var err error
			for try := 0; try < 20; try++ {
				if err = syscall.Rmdir(dirs[i]); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// unmountUnder unmounts (lazily, deepest first) every mount below the
// cluster's directory and the fixed paths that containerd and the kubelet
// use.
func unmountUnder(st *hostState) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	prefixes := []string{st.Dir + "/", "/run/containerd/", "/var/lib/kubelet/", "/var/lib/containerd/"}
	var targets []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		for _, p := range prefixes {
			if strings.HasPrefix(mp, p) {
				targets = append(targets, mp)
				break
			}
		}
	}
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	var errs []error
	for _, t := range targets {
		if err := syscall.Unmount(t, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("umount %s: %w", t, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes the octal escapes of /proc/self/mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// listChains lists the chains of one table.
func listChains(bin, table string) ([]string, error) {
	out, err := exec.Command(bin, "-w", "5", "-t", table, "-S").Output()
	if err != nil {
		return nil, err
	}
	var chains []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "-N" || f[0] == "-P") {
			chains = append(chains, f[1])
		}
	}
	return chains, nil
}

// removeChains removes the KUBE-* and CNI-* chains that were not there
// before, and the rules that jump to them.
func (st *hostState) removeChains() error {
	var errs []error
	for _, bin := range []string{"iptables", "ip6tables"} {
		for _, table := range iptablesTables {
			chains, err := listChains(bin, table)
			if err != nil {
				continue
			}
			ours := map[string]bool{}
			for _, ch := range chains {
				if !st.Chains[bin+"/"+table+"/"+ch] && (strings.HasPrefix(ch, "KUBE-") || strings.HasPrefix(ch, "CNI-")) {
					ours[ch] = true
				}
			}
			if len(ours) == 0 {
				continue
			}
			// Rules that jump to our chains, from any chain that stays,
			// deleted by number, last first.
			for _, ch := range chains {
				if ours[ch] {
					continue
				}
				out, err := exec.Command(bin, "-w", "5", "-t", table, "-S", ch).Output()
				if err != nil {
					continue
				}
				var nums []int
				n := 0
				for _, line := range strings.Split(string(out), "\n") {
					if !strings.HasPrefix(line, "-A ") {
						continue
					}
					n++
					f := strings.Fields(line)
					for i := 0; i+1 < len(f); i++ {
						if (f[i] == "-j" || f[i] == "-g") && ours[f[i+1]] {
							nums = append(nums, n)
							break
						}
					}
				}
				for i := len(nums) - 1; i >= 0; i-- {
					if out, err := exec.Command(bin, "-w", "5", "-t", table, "-D", ch, strconv.Itoa(nums[i])).CombinedOutput(); err != nil {
						errs = append(errs, fmt.Errorf("%s -t %s -D %s %d: %v: %s", bin, table, ch, nums[i], err, out))
					}
				}
			}
			for ch := range ours {
				_ = exec.Command(bin, "-w", "5", "-t", table, "-F", ch).Run()
			}
			for ch := range ours {
				if out, err := exec.Command(bin, "-w", "5", "-t", table, "-X", ch).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Errorf("%s -t %s -X %s: %v: %s", bin, table, ch, err, out))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists what the cluster left on the host after Stop: processes
// it started, mounts, the bridge, network namespaces, iptables chains,
// changed sysctls, cgroups, fixed paths and its state file. Empty is
// clean. Tests call it after Stop.
func (c *Cluster) Leftovers() []string {
	st := c.host
	if st == nil {
		return nil
	}
	var out []string
	for name, pid := range st.PIDs {
		if cmdline(pid) != "" && strings.Contains(exeOf(pid), name) {
			out = append(out, fmt.Sprintf("process %s (pid %d)", name, pid))
		}
	}
	for _, pid := range ownPIDs(st.Dir) {
		out = append(out, fmt.Sprintf("process %d: %s", pid, cmdline(pid)))
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 5 {
				continue
			}
			mp := unescapeMount(f[4])
			for _, p := range []string{st.Dir + "/", "/run/containerd/", "/var/lib/kubelet/", "/run/netns/cni-"} {
				if strings.HasPrefix(mp, p) {
					out = append(out, "mount "+mp)
				}
			}
		}
	}
	if err := exec.Command("ip", "link", "show", Bridge).Run(); err == nil {
		out = append(out, "bridge "+Bridge)
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if !st.Netns[e.Name()] && strings.HasPrefix(e.Name(), "cni-") {
				out = append(out, "network namespace "+e.Name())
			}
		}
	}
	for _, bin := range []string{"iptables", "ip6tables"} {
		for _, table := range iptablesTables {
			chains, err := listChains(bin, table)
			if err != nil {
				continue
			}
			for _, ch := range chains {
				if !st.Chains[bin+"/"+table+"/"+ch] && (strings.HasPrefix(ch, "KUBE-") || strings.HasPrefix(ch, "CNI-")) {
					out = append(out, fmt.Sprintf("%s -t %s chain %s", bin, table, ch))
				}
			}
		}
	}
	for s, v := range st.Sysctls {
		if b, err := os.ReadFile("/proc/sys/" + s); err == nil && strings.TrimSpace(string(b)) != v {
			out = append(out, fmt.Sprintf("sysctl %s = %s (was %s)", s, strings.TrimSpace(string(b)), v))
		}
	}
	for _, h := range cgroupHierarchies() {
		if _, err := os.Stat(filepath.Join(h, "kubepods")); err == nil {
			out = append(out, "cgroup "+filepath.Join(h, "kubepods"))
		}
	}
	for _, p := range fixedPaths {
		if _, err := os.Lstat(p); err == nil && !st.Existed[p] && !sharedPaths[p] {
			out = append(out, "path "+p)
		}
	}
	if _, err := os.Stat(filepath.Join(stateDir, "state.json")); err == nil {
		out = append(out, "state file "+filepath.Join(stateDir, "state.json"))
	}
	return out
}

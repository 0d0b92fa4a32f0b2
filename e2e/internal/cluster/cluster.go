// Package cluster brings up a one-node Kubernetes cluster that runs pods,
// from the parts this machine has (no Docker, no registry, no internet):
// Debian's etcd, containerd 1.6, runc and CNI plugins; kube-apiserver,
// kube-controller-manager, kube-scheduler, kubelet and kube-proxy 1.37
// built from the Go module proxy (scripts/tools.sh, tools/kube); CoreDNS
// as a process on the pod bridge's gateway address. Images come from
// e2e/internal/image (imagePullPolicy Never).
//
// containerd 1.6 and the kubelet write a few fixed host paths
// (/run/containerd, /var/lib/cni, /var/lib/kubelet, /var/log/pods,
// /var/log/containers, /run/netns) and the node is named localhost, so
// there is one cluster per machine at a time: Start takes a lock
// (/run/minimesh-cluster/lock) and Stop undoes what Start did to the host:
// processes by PID, mounts, the bridge, network namespaces, the iptables
// chains kubelet, kube-proxy and the CNI plugins added, the sysctls they
// changed, the cgroups of the pods. A run that died without Stop is
// cleaned up by the next Start, from the state it left in
// /run/minimesh-cluster/state.json.
//
// Settings that this VM needs (cgroup v1, root without CAP_SYS_RESOURCE):
// containerd's CRI restrict_oom_score_adj = true (else runc fails with
// "can't get final child's PID from pipe: EOF"), SystemdCgroup = false;
// kubelet failCgroupV1: false, cgroupDriver: cgroupfs, failSwapOn: false,
// enforceNodeAllocatable: [], resolvConf: ""; kube-apiserver
// --kubelet-preferred-address-types=Hostname and kubelet
// --hostname-override=localhost, so that logs, exec and port-forward reach
// the kubelet on loopback.
//
// Pods are first-class clients: the API server listens and advertises on
// the bridge's gateway, with a serving certificate for the kubernetes
// Service's IP and names (certs.go), and the ServiceAccount admission
// plugin is on (envtest turns it off), so in-cluster clients such as the
// chart's injector work.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/minimesh/minimesh/e2e/internal/image"
	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/internal/freeport"
)

// The cluster's addresses, all from 198.18.0.0/15 (RFC 2544, never routed):
// pods on a bridge without masquerade, services, and the cluster DNS
// (CoreDNS on the bridge's gateway address).
const (
	Bridge      = "mmcluster0"
	PodCIDR     = "198.18.240.0/24"
	Gateway     = "198.18.240.1"
	ServiceCIDR = "198.19.240.0/24"
	DNS         = Gateway
	NodeName    = "localhost"
	Domain      = "cluster.local"

	// PauseImage is the sandbox image, built here from
	// e2e/internal/image/pause.
	PauseImage = "minimesh.local/pause:e2e"
	// MinimeshImage is the Dockerfile's image (MinimeshImageOf).
	MinimeshImage = "minimesh.local/minimesh:e2e"
	// MinimeshInitImage is the Dockerfile's init image, of iptables
	// interception's minimesh-init (MinimeshInitImageOf): the injector's
	// default for MinimeshImage, its repository + -init, same tag.
	MinimeshInitImage = "minimesh.local/minimesh-init:e2e"

	stateDir = "/run/minimesh-cluster"
)

// Tools are the programs the cluster needs (tools.Find names).
var Tools = []string{
	"etcd", "kube-apiserver", "kubectl", "kube-controller-manager", "kube-scheduler",
	"kubelet", "kube-proxy", "coredns", "containerd", "containerd-shim-runc-v2", "ctr", "runc",
}

// cniPlugins are the CNI plugins the network configuration uses.
var cniPlugins = []string{"bridge", "host-local", "portmap", "loopback"}

const cniBinDir = "/usr/lib/cni"

// Options are the optional parts of Start.
type Options struct {
	// Logf reports progress (default: nothing).
	Logf func(format string, args ...any)
	// LockTimeout is how long Start waits for another cluster on this
	// machine to stop (default 5 minutes).
	LockTimeout time.Duration
}

// Cluster is a running one-node cluster.
type Cluster struct {
	// Dir holds the cluster's files: configurations, containerd's root and
	// state, the kubelet's root, logs/ (each process's output, written by
	// Stop).
	Dir string
	// Kubeconfig is the path of an admin (system:masters) kubeconfig.
	Kubeconfig string
	// Config is the same admin user as a client config.
	Config *rest.Config
	// Client is a clientset with Config.
	Client kubernetes.Interface
	// ContainerdAddress is containerd's socket (for ctr --address).
	ContainerdAddress string

	logf     func(string, ...any)
	paths    map[string]string
	env      *envtest.Environment
	procs    map[string]*proc.Proc
	order    []string // start order
	host     *hostState
	lock     *os.File
	stopOnce sync.Once
	stopErr  error
}

var logOnce sync.Once

// ErrNotRoot is returned by Start when the process is not root.
var ErrNotRoot = errors.New("cluster: a node needs root (mounts, network namespaces, iptables, cgroups)")

// Missing returns the tools (and CNI plugins) that are not installed, with
// how to install them; empty when everything is there.
func Missing() []string {
	var out []string
	for _, name := range Tools {
		if _, err := tools.Find(name); err != nil {
			out = append(out, err.Error())
		}
	}
	for _, p := range cniPlugins {
		if _, err := os.Stat(filepath.Join(cniBinDir, p)); err != nil {
			out = append(out, fmt.Sprintf("CNI plugin %s: %v (apt-get install containernetworking-plugins)", p, err))
		}
	}
	return out
}

// Start brings the cluster up in dir (which it creates) and returns once
// the node is Ready, the controller-manager has made the default service
// account, kube-proxy has synced and CoreDNS answers for the kubernetes
// Service. The pause image is imported; import others with Import. On
// failure everything started is stopped and cleaned up again.
func Start(ctx context.Context, dir string, opt Options) (c *Cluster, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if m := Missing(); len(m) > 0 {
		return nil, fmt.Errorf("cluster: missing tools: %s", strings.Join(m, "; "))
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	c = &Cluster{Dir: dir, logf: opt.Logf, paths: map[string]string{}, procs: map[string]*proc.Proc{}}
	if c.logf == nil {
		c.logf = func(string, ...any) {}
	}
	for _, name := range Tools {
		c.paths[name], _ = tools.Find(name)
	}
	if opt.LockTimeout <= 0 {
		opt.LockTimeout = 5 * time.Minute
	}
	if err := c.takeLock(ctx, opt.LockTimeout); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if serr := c.Stop(); serr != nil {
				c.logf("cluster: stop after a failed start: %v", serr)
			}
			c = nil
		}
	}()
	// A directory used before starts afresh (envtest would reuse the old
	// certificates, and containerd and the kubelet their old state).
	for _, d := range []string{"apiserver", "etcd", "containerd", "kubelet", "cni", "images", "logs"} {
		if err := os.RemoveAll(filepath.Join(dir, d)); err != nil {
			return c, err
		}
	}
	begin := time.Now()
	step := func(what string, f func() error) error {
		t0 := time.Now()
		if err := f(); err != nil {
			return fmt.Errorf("cluster: %s: %w", what, err)
		}
		c.logf("cluster: %s (%s)", what, time.Since(t0).Round(time.Millisecond))
		return nil
	}
	if err := step("host prepared", c.prepareHost); err != nil {
		return c, err
	}
	if err := step("etcd and kube-apiserver up", c.startAPIServer); err != nil {
		return c, err
	}
	if err := step("controller-manager, scheduler, CoreDNS, containerd started", func() error {
		if err := c.startControllers(); err != nil {
			return err
		}
		if err := c.startCoreDNS(); err != nil {
			return err
		}
		return c.startContainerd(ctx)
	}); err != nil {
		return c, err
	}
	if err := step("pause image imported", func() error { return c.importPause(ctx) }); err != nil {
		return c, err
	}
	if err := step("kubelet and kube-proxy started", c.startNode); err != nil {
		return c, err
	}
	if err := step("node Ready, DNS answers, kube-proxy synced", func() error { return c.waitReady(ctx) }); err != nil {
		return c, err
	}
	c.logf("cluster: up in %s (kubeconfig %s)", time.Since(begin).Round(time.Millisecond), c.Kubeconfig)
	return c, nil
}

// takeLock takes the machine-wide lock, then cleans up after a previous
// run that died without Stop.
func (c *Cluster) takeLock(ctx context.Context, timeout time.Duration) error {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(stateDir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return fmt.Errorf("cluster: another cluster runs on this machine (lock %s): %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	c.lock = f
	if old, err := loadState(); err == nil && old != nil {
		c.logf("cluster: cleaning up after a run that did not stop (%s)", old.Dir)
		for _, e := range old.cleanup(c.paths["kube-proxy"]) {
			c.logf("cluster: cleanup: %v", e)
		}
		// Its images and containers; its logs and configuration stay.
		_ = os.RemoveAll(filepath.Join(old.Dir, "containerd"))
	}
	return nil
}

func (c *Cluster) prepareHost() error {
	st, err := snapshotHost(c.Dir)
	if err != nil {
		return err
	}
	c.host = st
	if err := st.save(); err != nil {
		return err
	}
	// The bridge is made here, not by the CNI plugin at the first pod, so
	// that CoreDNS can listen on its address before any pod runs.
	for _, args := range [][]string{
		{"link", "add", Bridge, "type", "bridge"},
		{"addr", "add", Gateway + "/24", "dev", Bridge},
		{"link", "set", Bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

func (c *Cluster) startAPIServer() error {
	assets := filepath.Join(c.Dir, "assets")
	if err := os.MkdirAll(assets, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"kube-apiserver", "etcd", "kubectl"} {
		_ = os.Remove(filepath.Join(assets, name))
		if err := os.Symlink(c.paths[name], filepath.Join(assets, name)); err != nil {
			return err
		}
	}
	logOnce.Do(func() { ctrllog.SetLogger(logr.Discard()) })
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	// Their files in Dir too, so that a cleanup after a crash finds them
	// by it.
	env.ControlPlane.GetAPIServer().CertDir = filepath.Join(c.Dir, "apiserver")
	env.ControlPlane.Etcd = &envtest.Etcd{DataDir: filepath.Join(c.Dir, "etcd")}
	for _, d := range []string{"apiserver", "etcd"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o700); err != nil {
			return err
		}
	}
	// The API server listens on the bridge's gateway address, so that pods
	// reach it through the kubernetes Service (in-cluster clients such as
	// the injector), and it advertises that address: its endpoints are
	// real.
	apiPort, err := freeport.Addr()
	if err != nil {
		return err
	}
	_, port, _ := net.SplitHostPort(apiPort)
	api := env.ControlPlane.GetAPIServer()
	api.SecureServing.Address = Gateway
	api.SecureServing.Port = port
	if api.SecureServing.CA, err = writeAPIServerCerts(api.CertDir); err != nil {
		return err
	}
	args := api.Configure()
	args.Set("advertise-address", Gateway)
	args.Set("service-cluster-ip-range", ServiceCIDR)
	// envtest turns the ServiceAccount admission plugin off since it runs
	// no controller-manager; here pods get their service account's token.
	args.Set("disable-admission-plugins", "")
	// The API server reaches the kubelet (logs, exec, port-forward) at
	// its node name, localhost.
	args.Set("kubelet-preferred-address-types", "Hostname")
	args.Set("allow-privileged", "true")
	_, err = env.Start()
	c.env = env
	if err != nil {
		return err
	}
	admin, err := env.AddUser(envtest.User{Name: "cluster-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, kc, 0o600); err != nil {
		return err
	}
	c.Config = admin.Config()
	// The controller-manager signs nothing, but publishes the CA
	// (kube-root-ca.crt) that service account token volumes hold.
	if err := os.WriteFile(filepath.Join(c.Dir, "ca.crt"), c.Config.CAData, 0o644); err != nil {
		return err
	}
	c.Client, err = kubernetes.NewForConfig(c.Config)
	return err
}

// start starts a program of the cluster; its output is kept (the last
// MiB) and written to Dir/logs/NAME.log by Stop.
func (c *Cluster) start(name string, args ...string) error {
	env := append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	p, err := proc.Start(name, c.paths[name], args, proc.Options{Env: env, Dir: c.Dir, OutputMax: 1 << 20})
	if err != nil {
		return err
	}
	c.procs[name] = p
	c.order = append(c.order, name)
	c.host.addPID(name, p.Pid())
	return c.host.save()
}

func (c *Cluster) startControllers() error {
	ports, err := freeport.Addrs(2)
	if err != nil {
		return err
	}
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	common := []string{
		"--kubeconfig", c.Kubeconfig,
		"--authentication-kubeconfig", c.Kubeconfig,
		"--authorization-kubeconfig", c.Kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
	}
	if err := c.start("kube-controller-manager", append(common,
		"--secure-port", port(ports[0]),
		"--use-service-account-credentials=false",
		"--root-ca-file", filepath.Join(c.Dir, "ca.crt"),
		"--service-account-private-key-file", filepath.Join(c.Dir, "apiserver", "sa-signer.key"),
		"--allocate-node-cidrs=false",
		"--configure-cloud-routes=false",
		"--service-cluster-ip-range", ServiceCIDR,
		"--cluster-cidr", PodCIDR,
	)...); err != nil {
		return err
	}
	return c.start("kube-scheduler", append(common, "--secure-port", port(ports[1]))...)
}

func (c *Cluster) startCoreDNS() error {
	corefile := fmt.Sprintf(`.:53 {
	bind %s
	errors
	kubernetes %s in-addr.arpa {
		kubeconfig %s
		pods insecure
		fallthrough in-addr.arpa
		ttl 5
	}
	cache 5
	loadbalance
}
`, DNS, Domain, c.Kubeconfig)
	path := filepath.Join(c.Dir, "Corefile")
	if err := os.WriteFile(path, []byte(corefile), 0o644); err != nil {
		return err
	}
	return c.start("coredns", "-conf", path)
}

func (c *Cluster) containerdDir(parts ...string) string {
	return filepath.Join(append([]string{c.Dir, "containerd"}, parts...)...)
}

func (c *Cluster) startContainerd(ctx context.Context) error {
	for _, d := range []string{c.containerdDir("root"), c.containerdDir("state"), filepath.Join(c.Dir, "cni", "net.d")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	conflist := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "minimesh",
  "plugins": [
    {
      "type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q, "gateway": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, Bridge, PodCIDR, Gateway, filepath.Join(c.Dir, "cni", "ipam"))
	if err := os.WriteFile(filepath.Join(c.Dir, "cni", "net.d", "10-minimesh.conflist"), []byte(conflist), 0o644); err != nil {
		return err
	}
	c.ContainerdAddress = c.containerdDir("containerd.sock")
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
    max_conf_num = 1
`, c.containerdDir("root"), c.containerdDir("state"), c.ContainerdAddress, c.ContainerdAddress+".ttrpc",
		PauseImage, cniBinDir, filepath.Join(c.Dir, "cni", "net.d"))
	path := c.containerdDir("config.toml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		return err
	}
	if err := c.start("containerd", "--config", path); err != nil {
		return err
	}
	return c.procs["containerd"].WaitReady(time.Minute, func() error {
		return exec.CommandContext(ctx, c.paths["ctr"], "--address", c.ContainerdAddress, "version").Run()
	})
}

func (c *Cluster) importPause(ctx context.Context) error {
	bin := filepath.Join(c.Dir, "images", "pause")
	if err := BuildStatic(ctx, "./e2e/internal/image/pause", bin); err != nil {
		return err
	}
	return c.Import(ctx, image.Image{Ref: PauseImage, Files: []image.File{{Name: "/pause", Src: bin}}, Entrypoint: []string{"/pause"}, User: "65535:65535"})
}

// Import loads images into the node's containerd, for pods with
// imagePullPolicy Never.
func (c *Cluster) Import(ctx context.Context, imgs ...image.Image) error {
	return image.Import(ctx, c.paths["ctr"], c.ContainerdAddress, "k8s.io", imgs...)
}

// MinimeshImageOf is minimesh's image as the Dockerfile builds it
// (image.Minimesh), from the binaries of `make build`, named MinimeshImage.
func MinimeshImageOf() (image.Image, error) {
	for _, name := range []string{"minimesh-proxy", "minimesh"} {
		if _, err := tools.Binary(name); err != nil {
			return image.Image{}, err
		}
	}
	dir, err := tools.BinDir()
	if err != nil {
		return image.Image{}, err
	}
	return image.Minimesh(dir, MinimeshImage), nil
}

// MinimeshInitImageOf is the init container's image as the Dockerfile's
// init stage builds it (image.MinimeshInit), from `make build`'s
// minimesh-proxy and this host's Debian iptables, named MinimeshInitImage.
func MinimeshInitImageOf() (image.Image, error) {
	if _, err := tools.Binary("minimesh-proxy"); err != nil {
		return image.Image{}, err
	}
	dir, err := tools.BinDir()
	if err != nil {
		return image.Image{}, err
	}
	return image.MinimeshInit(dir, MinimeshInitImage)
}

// BuildStatic builds the main package pkg of the minimesh module (a path
// relative to its root, like ./e2e/internal/image/pause) as a static
// binary at out.
func BuildStatic(ctx context.Context, pkg, out string) error {
	root, err := tools.RepoRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w: %s", pkg, err, b)
	}
	return nil
}

func (c *Cluster) startNode() error {
	kroot := filepath.Join(c.Dir, "kubelet")
	if err := os.MkdirAll(kroot, 0o755); err != nil {
		return err
	}
	kcfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
enforceNodeAllocatable: []
resolvConf: ""
clusterDNS: [%s]
clusterDomain: %s
containerRuntimeEndpoint: unix://%s
staticPodPath: ""
serializeImagePulls: false
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 2s
syncFrequency: 10s
fileCheckFrequency: 20s
shutdownGracePeriod: 0s
registerNode: true
`, DNS, Domain, c.ContainerdAddress)
	cfgPath := filepath.Join(c.Dir, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, []byte(kcfg), 0o644); err != nil {
		return err
	}
	if err := c.start("kubelet",
		"--config", cfgPath,
		"--kubeconfig", c.Kubeconfig,
		"--hostname-override", NodeName,
		"--root-dir", kroot,
		"--cert-dir", filepath.Join(kroot, "pki"),
		"--v=1",
	); err != nil {
		return err
	}
	addrs, err := freeport.Addrs(2)
	if err != nil {
		return err
	}
	health, metrics := addrs[0], addrs[1]
	pcfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
mode: iptables
hostnameOverride: %s
clusterCIDR: %s
healthzBindAddress: %s
metricsBindAddress: %s
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
  syncPeriod: 30s
  minSyncPeriod: 0s
`, c.Kubeconfig, NodeName, PodCIDR, health, metrics)
	pPath := filepath.Join(c.Dir, "kube-proxy.yaml")
	if err := os.WriteFile(pPath, []byte(pcfg), 0o644); err != nil {
		return err
	}
	c.host.ProxyHealth = health
	return c.start("kube-proxy", "--config", pPath)
}

func (c *Cluster) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(3 * time.Minute)
	var last error
	check := func() error {
		for name, p := range c.procs {
			if err := p.Alive(); err != nil {
				return fmt.Errorf("%s exited: %v", name, err)
			}
		}
		node, err := c.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("node %s: %w", NodeName, err)
		}
		ready := false
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status != corev1.ConditionTrue {
					return fmt.Errorf("node not Ready: %s: %s", cond.Reason, cond.Message)
				}
				ready = true
			}
		}
		if !ready {
			return errors.New("node has no Ready condition yet")
		}
		if _, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return fmt.Errorf("controller-manager: service account default/default: %w", err)
		}
		resp, err := http.Get("http://" + c.host.ProxyHealth + "/healthz")
		if err != nil {
			return fmt.Errorf("kube-proxy: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("kube-proxy /healthz: %s", resp.Status)
		}
		if _, err := c.LookupHost(ctx, "kubernetes.default.svc."+Domain); err != nil {
			return fmt.Errorf("CoreDNS: %w", err)
		}
		return nil
	}
	for {
		if last = check(); last == nil {
			return nil
		}
		if strings.Contains(last.Error(), "exited") || time.Now().After(deadline) {
			return last
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// LookupHost asks the cluster DNS (CoreDNS) for name.
func (c *Cluster) LookupHost(ctx context.Context, name string) ([]string, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort(DNS, "53"))
	}}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return r.LookupHost(ctx, name)
}

// Kubectl runs kubectl with the admin kubeconfig and returns its combined
// output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return c.KubectlStdin(ctx, "", args...)
}

// KubectlStdin is Kubectl with stdin (for -f -).
func (c *Cluster) KubectlStdin(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.paths["kubectl"], append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Stop ends the cluster and undoes its changes to the host; see the
// package comment. It may be called more than once.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Cluster) stop() error {
	var errs []error
	t0 := time.Now()
	stopProc := func(names ...string) {
		for _, n := range names {
			if p := c.procs[n]; p != nil {
				p.Stop()
			}
		}
	}
	// No new pods; then the kubelet tears down the ones there are (their
	// network through CNI), which is cleaner than what follows.
	stopProc("kube-controller-manager", "kube-scheduler")
	if c.Client != nil && c.procs["kubelet"] != nil && c.procs["kubelet"].Alive() == nil {
		if err := c.deleteAllPods(30 * time.Second); err != nil {
			c.logf("cluster: stop: %v", err)
		}
	}
	stopProc("kube-proxy", "kubelet", "coredns", "containerd")
	if c.env != nil {
		if err := c.env.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop etcd and kube-apiserver: %w", err))
		}
	}
	// Keep every process's output.
	if err := os.MkdirAll(filepath.Join(c.Dir, "logs"), 0o755); err == nil {
		for name, p := range c.procs {
			_ = os.WriteFile(filepath.Join(c.Dir, "logs", name+".log"), []byte(p.Output()+"\n"), 0o644)
		}
	}
	if c.host != nil {
		errs = append(errs, c.host.cleanup(c.paths["kube-proxy"])...)
	}
	if c.lock != nil {
		_ = syscall.Flock(int(c.lock.Fd()), syscall.LOCK_UN)
		c.lock.Close()
	}
	c.logf("cluster: stopped and cleaned up in %s", time.Since(t0).Round(time.Millisecond))
	return errors.Join(errs...)
}

// deleteAllPods deletes every pod and waits until the kubelet has
// confirmed each deletion.
func (c *Cluster) deleteAllPods(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	grace := int64(1)
	nss, err := c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, ns := range nss.Items {
		err := c.Client.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &grace}, metav1.ListOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	for {
		pods, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err == nil && len(pods.Items) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			n := -1
			if pods != nil {
				n = len(pods.Items)
			}
			return fmt.Errorf("%d pods left after %s (%v)", n, timeout, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

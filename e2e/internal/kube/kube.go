// Package kube starts a real Kubernetes API server for end-to-end tests:
// kube-apiserver 1.37 built from the Go module proxy and Debian's etcd,
// both on loopback, through controller-runtime's envtest. There is no
// kubelet and no controller-manager, so pods stay Pending and Deployments
// make no ReplicaSets; admission (webhooks, Pod Security), validation,
// CRDs and RBAC are the real thing, which is what the injector, the chart
// and the control plane are tested against.
package kube

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/minimesh/minimesh/e2e/internal/proc"
)

var logOnce sync.Once

// Cluster is a running API server.
type Cluster struct {
	// Config is an admin (system:masters) client config.
	Config *rest.Config
	// Client is a typed clientset with Config.
	Client kubernetes.Interface
	// Kubeconfig is the path of a kubeconfig file with the same admin
	// user, for kubectl, helm and `minimesh --kubeconfig` in other
	// processes.
	Kubeconfig string

	kubectl string
}

// Start starts etcd and kube-apiserver and stops them, removing their
// files, when t ends. A missing binary skips the test, except under
// CI=true where it fails it (proc.NeedTool).
func Start(t testing.TB) *Cluster {
	t.Helper()
	assets := t.TempDir()
	for _, name := range []string{"kube-apiserver", "etcd", "kubectl"} {
		// envtest finds the binaries by name in one directory.
		if err := os.Symlink(proc.NeedTool(t, name), filepath.Join(assets, name)); err != nil {
			t.Fatal(err)
		}
	}
	// envtest logs through controller-runtime's logger, which prints a
	// stack trace when nobody set one; its errors come back as values.
	logOnce.Do(func() { ctrllog.SetLogger(logr.Discard()) })
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		// Two shared cores: etcd and a cold API server can take a while.
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	// envtest's defaults keep the ServiceAccount admission plugin off,
	// because no controller-manager creates the "default" service account
	// that it would demand of every pod. PodSecurity and the admission
	// webhooks stay on, as in a real cluster. No kubelet serves the
	// endpoints of the "kubernetes" Service either.
	env.ControlPlane.GetAPIServer().Configure().Set("endpoint-reconciler-type", "none")

	start := time.Now()
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Logf("stop kube-apiserver and etcd: %v", err)
		}
	})
	t.Logf("kube-apiserver and etcd started in %s at %s", time.Since(start).Round(time.Millisecond), cfg.Host)

	admin, err := env.AddUser(envtest.User{Name: "e2e-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatalf("add admin user: %v", err)
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Config: admin.Config(), Kubeconfig: path, kubectl: filepath.Join(assets, "kubectl")}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		t.Fatal(err)
	}
	return c
}

// Kubectl runs the real kubectl with the cluster's kubeconfig and returns
// its combined output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return c.KubectlStdin(ctx, "", args...)
}

// KubectlStdin is Kubectl with stdin (for -f -).
func (c *Cluster) KubectlStdin(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.kubectl, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// WaitEstablished waits until the CustomResourceDefinition crd (its
// name, e.g. "resiliencepolicies.minimesh.io") is Established, for at
// most 60 s. kubectl wait --for=condition=Established fails at once,
// instead of waiting, when it reads the CRD before the API server has
// given it any condition ("status.conditions accessor error"): seen in
// CI on a busy machine. This looks again until the condition is True.
func (c *Cluster) WaitEstablished(ctx context.Context, crd string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		out, err := c.Kubectl(ctx, "get", "crd/"+crd, "-o", `jsonpath={.status.conditions[?(@.type=="Established")].status}`)
		if err == nil && strings.TrimSpace(out) == "True" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("crd/%s not Established: %v %s", crd, err, out)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// CreateNamespace creates a namespace with labels.
func (c *Cluster) CreateNamespace(t testing.TB, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := c.Client.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

// RestrictedPod is a one-container pod that Pod Security "restricted"
// admits: what most tests create.
func RestrictedPod(name string, annotations map[string]string) *corev1.Pod {
	no, yes := false, true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: "example/app:1",
			SecurityContext: &corev1.SecurityContext{
				RunAsNonRoot: &yes, AllowPrivilegeEscalation: &no,
				Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
		}}},
	}
}

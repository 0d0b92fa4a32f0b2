// Package cluster tests minimesh in a real one-node Kubernetes cluster
// that runs pods (e2e/internal/cluster): a Deployment injected by `minimesh
// inject` runs the sidecar as a native sidecar, from an image built here,
// and its app calls a Service by its cluster DNS name through HTTP_PROXY.
//
// It needs root and the cluster's tools (make tools); it is skipped
// without root, and with MINIMESH_SKIP_CLUSTER=1. It takes the machine's
// one node (a lock), so it waits while `make cluster-up` runs one.
package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/e2e/internal/cluster"
	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
)

const testappImage = cluster.TestappImage

// start brings a cluster up for t, or skips t (fails it under CI=true,
// proc.Unmet) when it cannot run here.
func start(t *testing.T) *cluster.Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		proc.Unmet(t, "a node needs root")
	}
	if os.Getenv("MINIMESH_SKIP_CLUSTER") == "1" {
		proc.Unmet(t, "MINIMESH_SKIP_CLUSTER=1 (a developer's opt-out; not honoured under CI=true)")
	}
	for _, name := range cluster.Tools {
		proc.NeedTool(t, name)
	}
	if m := cluster.Missing(); len(m) > 0 {
		proc.Unmet(t, "missing: %s", strings.Join(m, "; "))
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := cluster.Start(ctx, dir, cluster.Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop the cluster: %v", err)
		}
		for _, l := range c.Leftovers() {
			t.Errorf("left on the host after Stop: %s", l)
		}
		if t.Failed() {
			for _, name := range []string{"kubelet", "containerd", "kube-proxy", "coredns"} {
				b, _ := os.ReadFile(filepath.Join(dir, "logs", name+".log"))
				if len(b) > 8<<10 {
					b = b[len(b)-8<<10:]
				}
				t.Logf("%s's last output:\n%s", name, b)
			}
		}
	})
	return c
}

const backend = `apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend}}
    spec:
      containers:
      - name: app
        image: ` + testappImage + `
        imagePullPolicy: Never
        args: [serve, ":8080"]
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: 8080}]
`

// client is what a user writes; `minimesh inject` adds the sidecar.
const client = `apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: demo}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - name: app
        image: ` + testappImage + `
        imagePullPolicy: Never
        args: [call, "http://backend.demo.svc.cluster.local/hello", ":8081"]
        readinessProbe: {httpGet: {path: /ready, port: 8081}, periodSeconds: 1}
`

// job calls the backend once and exits.
const job = `apiVersion: batch/v1
kind: Job
metadata: {name: once, namespace: demo}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: app
        image: ` + testappImage + `
        imagePullPolicy: Never
        args: [once, "http://backend.demo.svc.cluster.local/job"]
`

// TestSidecarInACluster: the node gets Ready; an injected Deployment's pod
// starts its native sidecar (startup probe) before the app, and the app's
// calls to a Service by its cluster DNS name go through the sidecar; an
// injected Job completes.
func TestSidecarInACluster(t *testing.T) {
	c := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	importImages(ctx, t, c)

	t0 := time.Now()
	if out, err := c.KubectlStdin(ctx, backend, "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	// The real injection, with the image built above.
	if out, err := c.KubectlStdin(ctx, inject(ctx, t, client), "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	rollout(ctx, t, c, "demo", "backend", "client")
	t.Logf("backend and injected client Ready in %s", time.Since(t0).Round(time.Millisecond))

	pod := checkClient(ctx, t, c)

	// A Job completes although its pod has a sidecar: the native sidecar
	// is stopped once the app has exited.
	t0 = time.Now()
	if out, err := c.KubectlStdin(ctx, inject(ctx, t, job), "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	if out, err := c.Kubectl(ctx, "-n", "demo", "wait", "--for=condition=Complete", "job/once", "--timeout=2m"); err != nil {
		describe(t, c, "demo")
		t.Fatal(out, err)
	}
	t.Logf("injected Job complete in %s", time.Since(t0).Round(time.Millisecond))

	// kubectl logs reaches the kubelet through the API server; the access
	// log line of a call may reach the container's log a moment after the
	// call.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		logs, err := c.Kubectl(ctx, "-n", "demo", "logs", pod.Name, "-c", "minimesh-proxy", "--tail=5")
		if err == nil && strings.Contains(logs, `"path":"/hello","status":200`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl logs of the sidecar: %v\n%s", err, logs)
		}
	}
}

// importImages builds and imports the minimesh image (from make build) and
// the test app's.
func importImages(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	t0 := time.Now()
	if err := c.ImportImages(ctx, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	t.Logf("images built and imported in %s", time.Since(t0).Round(time.Millisecond))
}

// checkClient checks the client pod of namespace demo: a native sidecar
// that started, and app calls to the backend that went through it.
func checkClient(ctx context.Context, t *testing.T, c *cluster.Cluster) corev1.Pod {
	t.Helper()
	pods, err := c.Client.CoreV1().Pods("demo").List(ctx, metav1.ListOptions{LabelSelector: "app=client"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("client pods: %v, %v", pods, err)
	}
	pod := pods.Items[0]
	if len(pod.Spec.InitContainers) != 1 || pod.Spec.InitContainers[0].Name != "minimesh-proxy" ||
		pod.Spec.InitContainers[0].RestartPolicy == nil || pod.Spec.InitContainers[0].StartupProbe == nil {
		t.Fatalf("the client pod has no native sidecar with a startup probe: %+v", pod.Spec.InitContainers)
	}
	for _, s := range pod.Status.InitContainerStatuses {
		if s.Name == "minimesh-proxy" && (s.Started == nil || !*s.Started || !s.Ready) {
			t.Fatalf("sidecar status: %+v", s)
		}
	}

	// The app's last call, as the app saw it: the backend's echo of the
	// request, which the sidecar forwarded.
	var last struct {
		Status int
		Body   string
		OK     int
	}
	get(t, "http://"+pod.Status.PodIP+":8081/last", &last)
	if last.Status != 200 || last.OK < 1 {
		t.Fatalf("the app's last call: %+v", last)
	}
	throughSidecar(t, last.Body, "/hello")

	// The sidecar's own account, on its admin port (pod IP).
	waitRequestsLine(t, pod)
	return pod
}

// throughSidecar checks the backend's echo (body) of a call that reached
// a backend pod at path through the sidecar (its Via and X-Request-ID),
// and returns the headers the backend saw.
func throughSidecar(t *testing.T, body, path string) map[string][]string {
	t.Helper()
	var echo struct {
		Host    string
		Path    string
		Headers map[string][]string
	}
	if err := json.Unmarshal([]byte(body), &echo); err != nil {
		t.Fatalf("backend answer %q: %v", body, err)
	}
	if echo.Path != path || !strings.HasPrefix(echo.Host, "backend-") {
		t.Fatalf("the call reached %+v, want the backend pod at %s", echo, path)
	}
	if len(echo.Headers["Via"]) == 0 || len(echo.Headers["X-Request-Id"]) == 0 {
		t.Fatalf("the backend saw no Via and X-Request-ID: the call did not go through the sidecar: %v", echo.Headers)
	}
	return echo.Headers
}

// waitRequestsLine waits for pod's sidecar to count a call to the backend
// answered 200, and logs the line; it may count a call a moment after the
// app has its answer.
func waitRequestsLine(t *testing.T, pod corev1.Pod) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		line, err := requestsLine("http://" + pod.Status.PodIP + ":15020/metrics")
		if line != "" {
			t.Logf("sidecar: %s", line)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no minimesh_requests_total for the backend with code 200 in the sidecar's metrics (%v)", err)
		}
	}
}

// requestsLine is the sidecar's minimesh_requests_total line for calls to
// the backend answered 200, or "".
func requestsLine(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	metrics, err := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(metrics), "\n") {
		if strings.HasPrefix(line, "minimesh_requests_total{") && strings.Contains(line, "backend") && strings.Contains(line, `code="200"`) {
			return line, nil
		}
	}
	return "", err
}

func minimesh(ctx context.Context, stdin string, args ...string) (string, error) {
	bin, err := tools.Binary("minimesh")
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("minimesh %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// inject is `minimesh inject` of manifest, with the injection config of
// these tests: the images imported into the node, never pulled.
func inject(ctx context.Context, t *testing.T, manifest string) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "injector.yaml")
	if err := os.WriteFile(cfg, []byte("proxy:\n  image: "+cluster.MinimeshImage+"\n  imagePullPolicy: Never\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := minimesh(ctx, manifest, "inject", "-f", "-", "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func get(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func describe(t *testing.T, c *cluster.Cluster, ns string) {
	out, _ := c.Kubectl(context.Background(), "-n", ns, "describe", "pods")
	t.Logf("pods:\n%s", out)
	out, _ = c.Kubectl(context.Background(), "get", "events", "-A")
	t.Logf("events:\n%s", out)
}

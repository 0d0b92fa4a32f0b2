package cluster

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/minimesh/minimesh/e2e/internal/cluster"
	"github.com/minimesh/minimesh/e2e/internal/image"
	"github.com/minimesh/minimesh/e2e/internal/tools"
)

// iptablesAgent is an app the test drives over HTTP (testapp agent), asking
// for iptables interception; `minimesh inject` adds minimesh-init and the
// sidecar.
const iptablesAgent = `apiVersion: apps/v1
kind: Deployment
metadata: {name: agent, namespace: demo}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata:
      labels: {app: agent}
      annotations: {minimesh.io/interception: iptables}
    spec:
      containers:
      - name: app
        image: ` + testappImage + `
        imagePullPolicy: Never
        args: [agent, "http://backend.demo.svc.cluster.local", ":8081"]
        readinessProbe: {httpGet: {path: /ready, port: 8081}, periodSeconds: 1}
`

// TestIPTablesInterceptionInACluster: a pod injected with iptables
// interception starts in a real node, its minimesh-init container running
// `minimesh-proxy init` from the init image (cluster.MinimeshInitImage,
// the sidecar's image has no iptables); the app, without any proxy
// variable, reaches a Service through the sidecar (the backend sees Via
// and X-Request-ID). It reports the init image's size and how long the
// init container ran.
func TestIPTablesInterceptionInACluster(t *testing.T) {
	c := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	reportInitImageSize(t)
	importImages(ctx, t, c)
	events := watchTasks(ctx, t, c)

	t0 := time.Now()
	if out, err := c.KubectlStdin(ctx, backend, "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	// The real injection; the injector names the init image after the
	// proxy image (repository + -init), which ImportImages imported.
	injected := inject(ctx, t, iptablesAgent)
	if out, err := c.KubectlStdin(ctx, injected, "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	rollout(ctx, t, c, "demo", "backend", "agent")
	t.Logf("backend and the iptables-injected agent Ready in %s", time.Since(t0).Round(time.Millisecond))

	pod := onePod(ctx, t, c, "demo", "app=agent")
	var names []string
	for _, ic := range pod.Spec.InitContainers {
		names = append(names, ic.Name+"="+ic.Image)
	}
	if len(pod.Spec.InitContainers) != 2 || pod.Spec.InitContainers[0].Name != "minimesh-init" ||
		pod.Spec.InitContainers[0].Image != cluster.MinimeshInitImage || pod.Spec.InitContainers[1].Image != cluster.MinimeshImage {
		t.Fatalf("init containers %q: want minimesh-init from %s, then the sidecar from %s", names, cluster.MinimeshInitImage, cluster.MinimeshImage)
	}
	for _, ctr := range pod.Spec.Containers {
		for _, e := range ctr.Env {
			if strings.Contains(strings.ToLower(e.Name), "proxy") {
				t.Fatalf("container %s has %s=%s: iptables interception sets no proxy variable", ctr.Name, e.Name, e.Value)
			}
		}
	}

	// minimesh-init ran to completion, and says which back-end it chose.
	var initStatus *corev1.ContainerStatus
	for i, s := range pod.Status.InitContainerStatuses {
		if s.Name == "minimesh-init" {
			initStatus = &pod.Status.InitContainerStatuses[i]
		}
	}
	if initStatus == nil || initStatus.State.Terminated == nil || initStatus.State.Terminated.ExitCode != 0 {
		t.Fatalf("minimesh-init status: %+v", initStatus)
	}
	logs, err := c.Kubectl(ctx, "-n", "demo", "logs", pod.Name, "-c", "minimesh-init")
	if err != nil {
		t.Fatal(logs, err)
	}
	backendLine := regexp.MustCompile(`minimesh-proxy init: back-end (legacy|nft) \(([^)]*)\)`).FindStringSubmatch(logs)
	if backendLine == nil || !strings.Contains(logs, "IPv4 rules in place") ||
		!strings.Contains(logs, "-A MINIMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001") {
		t.Fatalf("minimesh-init's log names no back-end or no rules:\n%s", logs)
	}
	t.Logf("minimesh-init: back-end %s (%s)", backendLine[1], backendLine[2])
	term := initStatus.State.Terminated
	t.Logf("minimesh-init ran %s by its status (seconds), %s by containerd's task events (start to exit)",
		term.FinishedAt.Sub(term.StartedAt.Time), events.ran(t, strings.TrimPrefix(initStatus.ContainerID, "containerd://")))

	// The app's calls, with no proxy variable and through a transport
	// without a proxy, go through the sidecar: the iptables rules redirect
	// them to its outbound port.
	a := agentOf(t, pod)
	r := a.get("http://backend.demo.svc.cluster.local/transparent", true)
	if r.Status != 200 {
		t.Fatalf("the app's call: %+v", r)
	}
	headers := throughSidecar(t, r.Body, "/transparent")
	t.Logf("the app's direct call reached the backend through the sidecar: Via %q", headers["Via"])
	// The sidecar counts it under the Service's name.
	waitRequestsLine(t, pod)
}

// reportInitImageSize logs the init image's size as ctr imports it (its
// one layer, uncompressed) and as a registry would store it (gzip).
func reportInitImageSize(t *testing.T) {
	t.Helper()
	img, err := cluster.MinimeshInitImageOf()
	if err != nil {
		t.Fatal(err)
	}
	var oci countWriter
	if err := image.WriteOCI(&oci, img); err != nil {
		t.Fatal(err)
	}
	var gz countWriter
	zw, _ := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
	if err := image.WriteOCI(zw, img); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	var proxy int64
	if fi, err := os.Stat(img.Files[0].Src); err == nil {
		proxy = fi.Size()
	}
	t.Logf("init image %s: %.1f MB uncompressed (minimesh-proxy %.1f MB), %.1f MB gzipped", img.Ref, float64(oci)/1e6, float64(proxy)/1e6, float64(gz)/1e6)
}

type countWriter int64

func (w *countWriter) Write(p []byte) (int, error) { *w += countWriter(len(p)); return len(p), nil }

// taskEvents are containerd's task start and exit events, by container.
type taskEvents struct {
	mu          sync.Mutex
	start, exit map[string]time.Time
}

// watchTasks follows `ctr events` of the node's containerd until ctx ends.
func watchTasks(ctx context.Context, t *testing.T, c *cluster.Cluster) *taskEvents {
	t.Helper()
	ev := &taskEvents{start: map[string]time.Time{}, exit: map[string]time.Time{}}
	ctr, err := tools.Find("ctr")
	if err != nil {
		t.Logf("no ctr (%v): no task timing", err)
		return ev
	}
	ctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(ctx, ctr, "--address", c.ContainerdAddress, "events")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Logf("ctr events: %v: no task timing", err)
		cancel()
		return ev
	}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	// 2026-12-01 17:40:00.123456789 +0000 UTC k8s.io /tasks/start {"container_id":"…","pid":1}
	re := regexp.MustCompile(`^(\S+ \S+ \S+ \S+) k8s\.io /tasks/(start|exit) (\{.*\})`)
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			m := re.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			when, err := time.Parse("2006-01-02 15:04:05.999999999 -0700 MST", m[1])
			if err != nil {
				continue
			}
			var e struct {
				ContainerID string `json:"container_id"`
				ID          string `json:"id"`
			}
			if json.Unmarshal([]byte(m[3]), &e) != nil || (e.ID != "" && e.ID != e.ContainerID) {
				continue // an exec's, not the container's own process
			}
			ev.mu.Lock()
			if m[2] == "start" {
				ev.start[e.ContainerID] = when
			} else {
				ev.exit[e.ContainerID] = when
			}
			ev.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, out)
		_ = cmd.Wait()
	}()
	return ev
}

// ran is how long container id's process ran, or "unknown".
func (ev *taskEvents) ran(t *testing.T, id string) string {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	s, ok1 := ev.start[id]
	e, ok2 := ev.exit[id]
	if !ok1 || !ok2 {
		t.Logf("containerd events of %s: start %v, exit %v", id, ok1, ok2)
		return "unknown"
	}
	return e.Sub(s).Round(time.Millisecond).String()
}

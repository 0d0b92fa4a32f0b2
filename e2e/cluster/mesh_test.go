package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/e2e/internal/cluster"
	"github.com/minimesh/minimesh/e2e/internal/clusterdemo"
	"github.com/minimesh/minimesh/e2e/internal/jaeger"
	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/prom"
)

// flaky is a namespace labelled for injection: a backend whose failures
// the test switches on and off (testapp serve), its ResiliencePolicy, and
// an app the test drives over HTTP (testapp agent), all injected by the
// chart's webhook.
const flaky = `apiVersion: v1
kind: Namespace
metadata: {name: breaker, labels: {minimesh.io/inject: enabled}}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: flaky, namespace: breaker}
spec:
  service: flaky
  circuitBreaker: {consecutiveFailures: 3, openTimeout: 2s, halfOpenRequests: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: flaky, namespace: breaker}
spec:
  selector: {matchLabels: {app: flaky}}
  template:
    metadata:
      labels: {app: flaky}
      # Calls into the backend go through its sidecar too (inbound
      # capture): the dashboards' inbound view has data.
      annotations: {minimesh.io/interception: iptables, minimesh.io/capture-inbound: enabled}
    spec:
      containers:
      - name: app
        image: ` + testappImage + `
        imagePullPolicy: Never
        args: [serve, ":8080", ":9090"]
        ports: [{containerPort: 8080}, {containerPort: 9090}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: flaky, namespace: breaker}
spec:
  selector: {app: flaky}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc, port: 9090, targetPort: 9090, appProtocol: kubernetes.io/h2c}
`

const agentApp = `apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: breaker}
spec:
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      terminationGracePeriodSeconds: 15
      containers:
      - name: app
        image: ` + testappImage + `
        imagePullPolicy: Never
        args: [agent, "http://flaky.breaker.svc.cluster.local", ":8081"]
        readinessProbe: {httpGet: {path: /ready, port: 8081}, periodSeconds: 1}
`

const flakyURL = "http://flaky.breaker.svc.cluster.local"

// meshInACluster runs, on a cluster with the chart installed (helm runs
// helm with the release's settings; spans go to j), the
// checks of issue #12: the breaker of a ResiliencePolicy served over xDS,
// the native sidecar's start and stop order, `helm test`, Prometheus and
// Jaeger outside the cluster, a helm upgrade, a rollout restart, make
// demo-cluster's story, and last a helm uninstall.
func meshInACluster(ctx context.Context, t *testing.T, c *cluster.Cluster, j *jaeger.Jaeger, helm func(args ...string) (string, error)) {
	t0 := time.Now()
	if out, err := c.KubectlStdin(ctx, flaky, "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	// The backend first: the app calls it as it starts.
	rollout(ctx, t, c, "breaker", "flaky")
	if out, err := c.KubectlStdin(ctx, agentApp, "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	rollout(ctx, t, c, "breaker", "app")
	t.Logf("namespace breaker: backend and app Ready in %s", time.Since(t0).Round(time.Millisecond))
	backendPod, appPod := onePod(ctx, t, c, "breaker", "app=flaky"), onePod(ctx, t, c, "breaker", "app=app")
	b := flakyBackend{t: t, url: "http://" + backendPod.Status.PodIP + ":8080"}
	a := agentOf(t, appPod)

	t.Run("SidecarStartsFirst", func(t *testing.T) { sidecarStartsFirst(ctx, t, c, appPod) })
	t.Run("Breaker", func(t *testing.T) { breakerInACluster(t, a, b) })
	t.Run("HelmTest", func(t *testing.T) {
		t0 := time.Now()
		out, err := helm("test", "minimesh", "--namespace", "minimesh", "--timeout", "2m", "--logs")
		if err != nil {
			o, _ := c.Kubectl(ctx, "-n", "minimesh", "describe", "pod", "minimesh-check")
			t.Fatalf("helm test: %v\n%s\n%s", err, out, o)
		}
		t.Logf("helm test passed in %s:\n%s", time.Since(t0).Round(time.Millisecond), out)
	})
	t.Run("SidecarStopsLast", func(t *testing.T) { sidecarStopsLast(ctx, t, c, appPod, b) })
	if t.Failed() {
		return
	}
	// The app's pod was deleted: its Deployment's next one drives the rest.
	rollout(ctx, t, c, "breaker", "app")
	appPod = onePod(ctx, t, c, "breaker", "app=app")
	a = agentOf(t, appPod)
	t.Run("Observability", func(t *testing.T) { observabilityInACluster(ctx, t, c, j, a, b) })
	t.Run("HelmUpgrade", func(t *testing.T) { helmUpgrade(ctx, t, c, helm) })
	t.Run("RolloutRestart", func(t *testing.T) { rolloutRestart(ctx, t, c, a) })
	t.Run("Demo", func(t *testing.T) {
		// make demo-cluster's story, compressed.
		var out strings.Builder
		rep, err := clusterdemo.Run(ctx, c, clusterdemo.Options{Out: &out, Healthy: 3 * time.Second, Outage: 6 * time.Second, Recovery: 9 * time.Second})
		t.Logf("the demo's output:\n%s", out.String())
		if err != nil {
			t.Fatal(err)
		}
		if err := rep.Check(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("HelmUninstall", func(t *testing.T) { helmUninstall(ctx, t, c, helm, a, appPod.Name) })
}

// rollout waits until each Deployment of ns is rolled out; on failure it
// logs the namespace's pods and the cluster's events.
func rollout(ctx context.Context, t *testing.T, c *cluster.Cluster, ns string, deployments ...string) {
	t.Helper()
	for _, d := range deployments {
		if out, err := c.Kubectl(ctx, "-n", ns, "rollout", "status", "deployment/"+d, "--timeout=3m"); err != nil {
			describe(t, c, ns)
			t.Fatal(out, err)
		}
	}
}

func onePod(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, selector string) corev1.Pod {
	t.Helper()
	pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	var running []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			running = append(running, p)
		}
	}
	if len(running) != 1 {
		t.Fatalf("pods %s in %s: %d running, want 1", selector, ns, len(running))
	}
	if running[0].Annotations["minimesh.io/status"] != "injected" {
		t.Fatalf("pod %s: not injected by the webhook (annotations %v)", running[0].Name, running[0].Annotations)
	}
	return running[0]
}

// sidecarStartsFirst: the kubelet started the app only once the native
// sidecar's startup probe had passed (the pod Initialized), and the app's
// first call, made as it started and not retried, went through.
func sidecarStartsFirst(ctx context.Context, t *testing.T, c *cluster.Cluster, pod corev1.Pod) {
	var sidecar, app *corev1.ContainerStatus
	for i, s := range pod.Status.InitContainerStatuses {
		if s.Name == "minimesh-proxy" {
			sidecar = &pod.Status.InitContainerStatuses[i]
		}
	}
	for i, s := range pod.Status.ContainerStatuses {
		if s.Name == "app" {
			app = &pod.Status.ContainerStatuses[i]
		}
	}
	if sidecar == nil || app == nil || sidecar.State.Running == nil || app.State.Running == nil ||
		sidecar.RestartCount != 0 || app.RestartCount != 0 || sidecar.Started == nil || !*sidecar.Started {
		t.Fatalf("container statuses: sidecar %+v, app %+v", sidecar, app)
	}
	var initialized time.Time
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodInitialized && cond.Status == corev1.ConditionTrue {
			initialized = cond.LastTransitionTime.Time
		}
	}
	// The API's timestamps are whole seconds.
	sStart, aStart := sidecar.State.Running.StartedAt.Time, app.State.Running.StartedAt.Time
	t.Logf("sidecar started %s, pod Initialized (sidecar's startup probe passed) %s, app started %s",
		sStart.Format(time.TimeOnly), initialized.Format(time.TimeOnly), aStart.Format(time.TimeOnly))
	if initialized.IsZero() || initialized.Before(sStart) || aStart.Before(initialized) {
		t.Fatalf("want sidecar started ≤ Initialized ≤ app started: %s, %s, %s", sStart, initialized, aStart)
	}
	var logs string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		var err error
		logs, err = c.Kubectl(ctx, "-n", pod.Namespace, "logs", pod.Name, "-c", "app")
		if err == nil && strings.Contains(logs, "start: ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl logs of the app: %v\n%s", err, logs)
		}
	}
	if !strings.Contains(logs, "start: 200 \n") {
		t.Fatalf("the app's first call, as it started, did not get 200 through the sidecar:\n%s", logs)
	}
}

// breakerInACluster: three calls that the backend fails open the breaker;
// the fourth is answered by the sidecar and never reaches the backend;
// once the backend is healed, after openTimeout one probe closes it.
func breakerInACluster(t *testing.T, a agent, b flakyBackend) {
	// The policy, from the controller over xDS, in the sidecar.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		r := a.get("http://127.0.0.1:15020/debug/config", true)
		if strings.Contains(r.Body, `"source": "xds:outbound|0||flaky.breaker.svc.cluster.local"`) &&
			strings.Contains(r.Body, `"openTimeout": "2s"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar has not the flaky ResiliencePolicy: %+v", r)
		}
	}
	const path = "/breaker"
	b.fail(true)
	before := b.hits().Paths[path]
	backends503 := func(i int, r callResult) {
		t.Helper()
		if r.Status != http.StatusServiceUnavailable || r.Headers.Get("X-Minimesh-Error") != "" {
			t.Fatalf("call %d: %d %q (X-Minimesh-Error %q), want the backend's 503", i, r.Status, r.Error, r.Headers.Get("X-Minimesh-Error"))
		}
	}
	for i := 1; i <= 2; i++ {
		backends503(i, a.get(flakyURL+path, false))
		if n := b.hits().Paths[path] - before; n != i {
			t.Fatalf("after call %d the backend has %d hits", i, n)
		}
	}
	// Calls 3 and 4 and the healing follow each other at once: openTimeout
	// (2s) must not run out between them.
	r3 := a.get(flakyURL+path, false)
	t3 := time.Now()
	r := a.get(flakyURL+path, false)
	t4 := time.Now()
	b.fail(false)
	backends503(3, r3)
	if r.Status != http.StatusServiceUnavailable || r.Headers.Get("X-Minimesh-Error") != "circuit-open" {
		t.Fatalf("call 4, %s after call 3: %d %q (X-Minimesh-Error %q), want 503 circuit-open",
			t4.Sub(t3).Round(time.Millisecond), r.Status, r.Error, r.Headers.Get("X-Minimesh-Error"))
	}
	if n := b.hits().Paths[path] - before; n != 3 {
		t.Fatalf("call 4 answered circuit-open, but the backend has %d hits, want 3", n)
	}
	t.Logf("call 4: 503 circuit-open, Retry-After %q; the backend saw 3 calls", r.Headers.Get("Retry-After"))

	rejected := 0
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		r := a.get(flakyURL+path, false)
		if r.Status == http.StatusOK {
			break
		}
		if r.Status != http.StatusServiceUnavailable || r.Headers.Get("X-Minimesh-Error") != "circuit-open" {
			t.Fatalf("while open: %d %q (X-Minimesh-Error %q), want 503 circuit-open or 200", r.Status, r.Error, r.Headers.Get("X-Minimesh-Error"))
		}
		rejected++
		if time.Now().After(deadline) {
			t.Fatal("the breaker did not let a probe through in 15 s (openTimeout 2s)")
		}
	}
	t.Logf("healed: the first call that got through (the probe) came %s after call 4, after %d more circuit-open answers",
		time.Since(t4).Round(time.Millisecond), rejected)
	if n := b.hits().Paths[path] - before; n != 4 {
		t.Fatalf("the backend has %d hits, want 4 (three failures and one probe)", n)
	}
	// Closed again: the next calls go through.
	for i := 0; i < 3; i++ {
		if r := a.get(flakyURL+path, false); r.Status != http.StatusOK {
			t.Fatalf("after the probe: %d %q, want 200 (closed)", r.Status, r.Error)
		}
	}

	// The sidecar's metrics (on the pod's address) count the transitions.
	want := [][2]string{{"closed", "open"}, {"open", "half-open"}, {"half-open", "closed"}}
	var metrics string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		metrics, _ = fetch(a.ip + ":15020/metrics")
		ok := true
		for _, tr := range want {
			if metricValue(metrics, "minimesh_circuit_breaker_transitions_total", "destination", "flaky:80", "from", tr[0], "to", tr[1]) != 1 {
				ok = false
			}
		}
		if ok && metricValue(metrics, "minimesh_circuit_breaker_transitions_total", "destination", "flaky:80", "from", "half-open", "to", "open") <= 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("want one transition each %v for flaky:80 and none half-open → open:\n%s", want, grepLines(metrics, "minimesh_circuit_breaker"))
		}
	}
	t.Logf("sidecar metrics:\n%s", grepLines(metrics, "minimesh_circuit_breaker_transitions_total"))
}

// sidecarStopsLast deletes the app's pod: the app's SIGTERM handler makes
// one more call through the sidecar, on a new connection, which the
// backend receives with the sidecar's Via: the sidecar still served after
// the app had been told to stop.
func sidecarStopsLast(ctx context.Context, t *testing.T, c *cluster.Cluster, pod corev1.Pod, b flakyBackend) {
	kubectl := proc.NeedTool(t, "kubectl")
	logs := exec.CommandContext(ctx, kubectl, "--kubeconfig", c.Kubeconfig, "-n", pod.Namespace,
		"logs", "-f", pod.Name, "-c", "app")
	var out strings.Builder
	logs.Stdout, logs.Stderr = &out, &out
	if err := logs.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- logs.Wait() }()
	defer func() {
		_ = logs.Process.Kill()
		<-done
	}()
	t0 := time.Now()
	if err := c.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	path := "/term/" + pod.Name
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		h := b.hits()
		if h.Paths[path] > 0 {
			if h.Via[path] != h.Paths[path] {
				t.Fatalf("the backend got the app's last call without the sidecar's Via: %+v", h)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the backend never got the app's call during termination (%s)\napp's log:\n%s", path, out.String())
		}
	}
	t.Logf("the app's call during termination reached the backend through the sidecar %s after the delete",
		time.Since(t0).Round(time.Millisecond))
	// kubectl logs -f ends when the app's container has exited.
	select {
	case <-done:
		done <- nil
	case <-time.After(30 * time.Second):
		t.Fatalf("kubectl logs -f still running 30 s after the delete:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "term: 200 \n") {
		t.Fatalf("the app's log has no \"term: 200\":\n%s", out.String())
	}
}

// agent drives a testapp agent.
type agent struct {
	t   *testing.T
	ip  string
	url string
}

func agentOf(t *testing.T, pod corev1.Pod) agent {
	return agent{t: t, ip: pod.Status.PodIP, url: "http://" + pod.Status.PodIP + ":8081"}
}

type callResult struct {
	Status  int
	Error   string
	Headers http.Header
	Body    string
}

// get has the app GET u, through its sidecar unless direct.
func (a agent) get(u string, direct bool) callResult {
	a.t.Helper()
	q := "/get?url=" + url.QueryEscape(u)
	if direct {
		q += "&direct=1"
	}
	var r callResult
	getJSON(a.t, a.url+q, &r)
	return r
}

// load has the app GET u through its sidecar rps times a second for secs
// seconds (testapp's /load).
func (a agent) load(u string, rps, secs int) loadResult {
	a.t.Helper()
	var r loadResult
	getJSON(a.t, fmt.Sprintf("%s/load?rps=%d&seconds=%d&url=%s", a.url, rps, secs, url.QueryEscape(u)), &r)
	return r
}

// flakyBackend drives a testapp serve on its pod's address.
type flakyBackend struct {
	t   *testing.T
	url string
}

type backendHits struct {
	Total int
	Paths map[string]int
	Via   map[string]int
}

func (b flakyBackend) fail(on bool) {
	b.t.Helper()
	v := "0"
	if on {
		v = "1"
	}
	resp, err := http.Get(b.url + "/admin/fail?on=" + v)
	if err != nil {
		b.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		b.t.Fatalf("backend /admin/fail: %s", resp.Status)
	}
}

func (b flakyBackend) hits() backendHits {
	b.t.Helper()
	var h backendHits
	getJSON(b.t, b.url+"/admin/hits", &h)
	return h
}

// fetch GETs http://hostPort/path.
func fetch(hostPath string) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + hostPath)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	c := &http.Client{Timeout: 45 * time.Second} // /load runs up to 30 s
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", u, resp.Status, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v: %s", u, err, b)
	}
}

// metricValue is the value of the Prometheus text line of name with these
// label pairs (and maybe others), or -1.
func metricValue(text, name string, labels ...string) float64 {
	if v, ok := prom.TextValue(text, name, labels...); ok {
		return v
	}
	return -1
}

func grepLines(text, prefix string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

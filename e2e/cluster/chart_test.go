package cluster

import (
	"context"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/cluster"
	"github.com/minimesh/minimesh/e2e/internal/jaeger"
	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/internal/freeport"
)

// demoPolicy is the backend's policy: a timeout no default has.
const demoPolicy = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: backend, namespace: demo}
spec:
  service: backend
  timeout: 1700ms
`

// TestChartInACluster installs the chart with its injector running in the
// cluster (the minimesh image built here): the webhook injects the client
// of a namespace labelled for injection, the sidecar gets the backend's
// ResiliencePolicy from the injector's policy server (xDS), and the app's
// calls go through it. Then, on the same cluster, meshInACluster
// (mesh_test.go): the breaker, the native sidecar's start and stop order,
// and `helm test`.
func TestChartInACluster(t *testing.T) {
	helm := proc.NeedTool(t, "helm")
	c := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	importImages(ctx, t, c)

	// Jaeger on the host, where the pods reach it: the bridge's gateway.
	j, err := jaeger.Start(jaeger.Options{Path: proc.NeedTool(t, "jaeger"), OTLPHost: cluster.Gateway})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Stop()

	t0 := time.Now()
	h := cluster.Helm{Path: helm, Kubeconfig: c.Kubeconfig, Home: t.TempDir()}
	if out, err := h.InstallChart(ctx, "webhook.failurePolicy=Fail",
		"proxy.otlpEndpoint="+j.OTLPAddr, "proxy.traceSampleRatio=1"); err != nil {
		o, _ := c.Kubectl(ctx, "-n", "minimesh", "describe", "pods")
		t.Fatalf("%v\n%s\n%s", err, out, o)
	}
	t.Logf("chart installed, injector Ready in %s", time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	labelled := strings.Replace(backend, "metadata: {name: demo}", "metadata: {name: demo, labels: {minimesh.io/inject: enabled}}", 1)
	if out, err := c.KubectlStdin(ctx, labelled+"---\n"+demoPolicy+"---\n"+client, "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	rollout(ctx, t, c, "demo", "backend", "client")
	t.Logf("backend and client injected by the webhook, Ready in %s", time.Since(t0).Round(time.Millisecond))
	pod := checkClient(ctx, t, c)
	if pod.Annotations["minimesh.io/status"] != "injected" {
		t.Fatalf("client pod annotations %v: not injected by the webhook", pod.Annotations)
	}

	// The sidecar's effective policies (/debug/config is on its loopback
	// only: kubectl port-forward reaches it there).
	pf, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := strings.Cut(pf, ":")
	fwd := exec.CommandContext(ctx, proc.NeedTool(t, "kubectl"), "--kubeconfig", c.Kubeconfig,
		"-n", "demo", "port-forward", "pod/"+pod.Name, port+":15020")
	if err := fwd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fwd.Process.Kill(); _ = fwd.Wait() }()
	var config string
	deadline := time.Now().Add(30 * time.Second)
	for {
		config = ""
		resp, err := http.Get("http://127.0.0.1:" + port + "/debug/config")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			config = string(b)
			if strings.Contains(config, "1.7s") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar's /debug/config has no 1.7s timeout for the backend (from the ResiliencePolicy through xDS): %v\n%s", err, config)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("sidecar /debug/config: %s", config)
	_ = fwd.Process.Kill()

	meshInACluster(ctx, t, c, j, func(args ...string) (string, error) { return h.Run(ctx, args...) })
}

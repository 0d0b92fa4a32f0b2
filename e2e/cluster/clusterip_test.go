package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/e2e/internal/cluster"
	"github.com/minimesh/minimesh/e2e/internal/proc"
)

const clusterIPNS = "clusterip"

// clusterIPApps: two backend pods behind Service backend (HTTP and gRPC
// ports), a policy for it that retries a 5xx once, and an app injected
// with iptables interception.
var clusterIPApps = fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: clusterip}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend, namespace: clusterip}
spec:
  replicas: 2
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend}}
    spec:
      containers:
      - name: app
        image: %[1]s
        imagePullPolicy: Never
        args: [serve, ":8080", ":9090"]
        ports: [{containerPort: 8080}, {containerPort: 9090}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: clusterip}
spec:
  selector: {app: backend}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc, port: 9090, targetPort: 9090, appProtocol: kubernetes.io/h2c}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: backend, namespace: clusterip}
spec:
  service: backend
  retries: {attempts: 1, retryOn: [5xx, connect-failure, grpc-unavailable]}
  circuitBreaker: {consecutiveFailures: 50, openTimeout: 30s}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: clusterip}
spec:
  selector: {matchLabels: {app: app}}
  template:
    metadata:
      labels: {app: app}
      annotations: {minimesh.io/inject: enabled, minimesh.io/interception: iptables}
    spec:
      containers:
      - name: app
        image: %[1]s
        imagePullPolicy: Never
        args: [agent, "http://backend.clusterip.svc.cluster.local", ":8081"]
        readinessProbe: {httpGet: {path: /ready, port: 8081}, periodSeconds: 1}
`, testappImage)

// TestClusterIPInACluster: an app under iptables interception that calls
// a Service by its ClusterIP (http://$CLUSTERIP/, as from
// BACKEND_SERVICE_HOST, its Host header the IP) gets the Service's
// policy and balancing from its sidecar, with the chart's controller
// sending the ClusterIPs over EDS: the calls of one keep-alive
// connection (which kube-proxy sends to one pod) spread over both pods,
// a failing pod's 500s are retried on the other (the policy's retry: the
// app sees none), the sidecar counts them under backend:80, never under
// the address; a gRPC channel to ClusterIP:9090 (h2c) spreads too; a
// TLS connection to ClusterIP:80, relayed as opaque TCP, is counted under
// backend:80 as well.
func TestClusterIPInACluster(t *testing.T) {
	helm := proc.NeedTool(t, "helm")
	c := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	importImages(ctx, t, c)
	h := cluster.Helm{Path: helm, Kubeconfig: c.Kubeconfig, Home: t.TempDir()}
	if out, err := h.InstallChart(ctx, "webhook.failurePolicy=Fail"); err != nil {
		o, _ := c.Kubectl(ctx, "-n", "minimesh", "describe", "pods")
		t.Fatalf("%v\n%s\n%s", err, out, o)
	}
	if out, err := c.KubectlStdin(ctx, clusterIPApps, "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	rollout(ctx, t, c, clusterIPNS, "backend", "app")
	appPod := onePod(ctx, t, c, clusterIPNS, "app=app")
	if len(appPod.Spec.InitContainers) == 0 || appPod.Spec.InitContainers[0].Name != "minimesh-init" {
		t.Fatalf("the app pod has no minimesh-init: %v", appPod.Spec.InitContainers)
	}
	a := agentOf(t, appPod)
	svc, err := c.Client.CoreV1().Services(clusterIPNS).Get(ctx, "backend", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP
	httpURL := "http://" + net.JoinHostPort(vip, "80")
	pods := runningBackends(ctx, t, c, clusterIPNS, 2).pods

	// The sidecar balances the ClusterIP's calls once the controller's
	// ClusterIPs and endpoints reached it (the app starts before).
	var r spreadResult
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		r = a.spread("url=" + httpURL + "/spread&n=200&direct=1")
		if r.Errors == 0 && r.share(pods[0].name) > 0.2 && r.share(pods[1].name) > 0.2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("200 calls to %s over one connection: %s, %d errors; want both pods (the sidecar balancing the Service)", httpURL, r.shares(), r.Errors)
		}
	}
	t.Logf("200 calls to %s over one keep-alive connection: %s", httpURL, r.shares())

	// The Service's policy: a pod that answers 500 is retried on the
	// other, and the app sees only 200s.
	pods[0].fail(t, 500)
	r = a.spread("url=" + httpURL + "/retried&n=100&direct=1")
	pods[0].fail(t, 0)
	if r.Errors > 0 || r.Statuses["200"] != 100 {
		t.Fatalf("with %s failing, the calls to the ClusterIP: %v %v; want 100 200s (the policy's retry)", pods[0].name, r.Statuses, r.ErrorSamples)
	}
	t.Logf("with %s answering 500: %v (%s)", pods[0].name, r.Statuses, r.shares())

	// gRPC (h2c) to ClusterIP:9090, redirected, named and balanced too.
	g := a.spread("grpc=1&direct=1&n=200&target=" + net.JoinHostPort(vip, "9090"))
	g.noErrors(t)
	if g.share(pods[0].name) < 0.2 || g.share(pods[1].name) < 0.2 {
		t.Errorf("200 gRPC calls on one channel to %s:9090: %s; want both pods", vip, g.shares())
	}
	t.Logf("200 gRPC calls to %s:9090 over one channel: %s", vip, g.shares())

	// Opaque TCP to the ClusterIP (TLS the app originates, to an IP: no
	// SNI), relayed as bytes, is named by the Service too. The backend
	// speaks HTTP, so the handshake fails: the relay is what counts.
	if r := a.get("https://"+net.JoinHostPort(vip, "80")+"/", true); r.Error == "" {
		t.Logf("TLS to %s:80 answered %d", vip, r.Status)
	}

	// Counted under the Service's name, never the address. The opaque
	// relay is counted when it ends: wait for it.
	var b []byte
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		resp, err := http.Get("http://" + appPod.Status.PodIP + ":15020/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		counted := false
		for _, line := range strings.Split(string(b), "\n") {
			counted = counted || strings.HasPrefix(line, "minimesh_tcp_connections_total{") && strings.Contains(line, `destination="backend:80"`)
		}
		if counted || time.Now().After(deadline) {
			break
		}
	}
	var named, tcp []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "minimesh_requests_total{") || strings.HasPrefix(line, "minimesh_grpc_requests_total{") ||
			strings.HasPrefix(line, "minimesh_tcp_connections_total{") {
			if strings.Contains(line, vip) {
				t.Errorf("counted under the ClusterIP: %s", line)
			}
			if !strings.Contains(line, `destination="backend:80"`) && !strings.Contains(line, `destination="backend:9090"`) {
				continue
			}
			if strings.HasPrefix(line, "minimesh_tcp_") {
				tcp = append(tcp, line)
			} else {
				named = append(named, line)
			}
		}
	}
	if len(named) < 2 {
		t.Fatalf("no minimesh_requests_total and minimesh_grpc_requests_total for backend:80 and backend:9090 in the sidecar's metrics:\n%.3000s", b)
	}
	if len(tcp) == 0 {
		t.Errorf("the opaque TCP connection to %s:80 is not in minimesh_tcp_connections_total{destination=\"backend:80\"}:\n%.3000s", vip, b)
	}
	named = append(named, tcp...)
	for _, l := range named {
		t.Logf("sidecar: %s", l)
	}
}

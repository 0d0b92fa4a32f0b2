package cluster

import (
	"context"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/e2e/internal/cluster"
	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/internal/pki"
)

// probeApps are a namespace labelled for injection and one labelled too
// but in the release's webhook.excludeNamespaces: the webhook never sees
// the second, so its pod runs without a sidecar and that is right. The
// app is minimesh-proxy itself on other ports: something that keeps running.
const probeApps = `apiVersion: v1
kind: Namespace
metadata: {name: NS, labels: {minimesh.io/inject: enabled}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: NS}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: ` + cluster.MinimeshImage + `
        imagePullPolicy: Never
        command: [/minimesh-proxy, run, "--admin-addr=:9999", "--outbound-addr=127.0.0.1:16001", "--policy-dir=/tmp"]
`

// refusedStatefulSet is a StatefulSet in the namespace labelled for
// injection, for when the injector is down.
const refusedStatefulSet = `apiVersion: apps/v1
kind: StatefulSet
metadata: {name: refused-db, namespace: shop}
spec:
  serviceName: refused-db
  selector: {matchLabels: {app: refused-db}}
  template:
    metadata: {labels: {app: refused-db}}
    spec:
      containers:
      - name: app
        image: ` + cluster.MinimeshImage + `
        imagePullPolicy: Never
`

// TestCheckOtherRelease installs the chart as a platform engineer
// new to it might: release mm in namespace mesh, its own certificate
// (tls.mode=secret), failurePolicy Fail and one more excluded namespace.
// The install works (the webhook injects), so `minimesh check` and `helm
// test` must pass; then each fault must be named, with a hint that points
// at the release's namespace: the injector down, the CRD deleted. Last,
// helm uninstall leaves no webhook behind.
func TestCheckOtherRelease(t *testing.T) {
	helm := proc.NeedTool(t, "helm")
	c := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	importImages(ctx, t, c)
	bin, err := tools.Binary("minimesh")
	if err != nil {
		t.Fatal(err)
	}
	check := func(args ...string) (int, string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, bin, append([]string{"check", "--kubeconfig", c.Kubeconfig, "--timeout", "10s"}, args...)...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	want := func(out string, lines ...string) {
		t.Helper()
		for _, l := range lines {
			if !strings.Contains(out, l) {
				t.Errorf("minimesh check output lacks %q:\n%s", l, out)
			}
		}
	}

	// The user's own serving certificate, for the Service in mesh.
	ca, err := pki.NewCA("my-ca")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue([]string{"minimesh-injector.mesh.svc"}, time.Now().Add(-time.Hour), time.Now().Add(90*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(crt, pair.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pair.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Kubectl(ctx, "create", "namespace", "mesh"); err != nil {
		t.Fatal(out, err)
	}
	if out, err := c.Kubectl(ctx, "-n", "mesh", "create", "secret", "tls", "my-tls", "--cert", crt, "--key", key); err != nil {
		t.Fatal(out, err)
	}

	chart, err := cluster.Chart()
	if err != nil {
		t.Fatal(err)
	}
	h := cluster.Helm{Path: helm, Kubeconfig: c.Kubeconfig, Home: t.TempDir()}
	repo, tag, _ := strings.Cut(cluster.MinimeshImage, ":")
	if out, err := h.Run(ctx, "install", "mm", chart, "--namespace", "mesh",
		"--set", "image.repository="+repo, "--set", "image.tag="+tag, "--set", "image.pullPolicy=Never",
		"--set", "injector.replicas=1", "--set", "webhook.failurePolicy=Fail",
		"--set", "tls.mode=secret", "--set", "tls.secretName=my-tls",
		"--set", "webhook.caBundle="+base64.StdEncoding.EncodeToString(ca.PEM),
		"--set", "webhook.excludeNamespaces={kube-system,kube-node-lease,legacy}",
		"--wait", "--timeout", "3m"); err != nil {
		o, _ := c.Kubectl(ctx, "-n", "mesh", "describe", "pods")
		t.Fatalf("helm install: %v\n%s\n%s", err, out, o)
	}
	for _, ns := range []string{"shop", "legacy"} {
		if out, err := c.KubectlStdin(ctx, strings.ReplaceAll(probeApps, "NS", ns), "apply", "-f", "-"); err != nil {
			t.Fatal(out, err)
		}
	}
	rollout(ctx, t, c, "shop", "web")
	rollout(ctx, t, c, "legacy", "web")
	onePod(ctx, t, c, "shop", "app=web") // injected: the install works
	legacy, err := c.Client.CoreV1().Pods("legacy").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range legacy.Items {
		if p.Annotations["minimesh.io/status"] == "injected" {
			t.Fatalf("pod legacy/%s is injected although webhook.excludeNamespaces has legacy", p.Name)
		}
	}

	// A working install: every check passes, with and without --namespace
	// (the webhook says where the release is).
	for _, args := range [][]string{{"--namespace", "mesh"}, nil} {
		if code, out := check(args...); code != 0 {
			t.Errorf("minimesh check %v on a working install: exit %d\n%s", args, code, out)
		}
	}
	if out, err := h.Run(ctx, "test", "mm", "--namespace", "mesh", "--timeout", "2m", "--logs"); err != nil {
		t.Errorf("helm test on a working install: %v\n%s", err, out)
	}

	t.Run("injector down", func(t *testing.T) {
		if out, err := c.Kubectl(ctx, "-n", "mesh", "scale", "deployment/minimesh-injector", "--replicas=0"); err != nil {
			t.Fatal(out, err)
		}
		if out, err := c.Kubectl(ctx, "-n", "mesh", "wait", "--for=delete", "pod", "-l", "app.kubernetes.io/component=injector", "--timeout=1m"); err != nil {
			t.Fatal(out, err)
		}
		// With failurePolicy Fail, a new workload's pods are refused: there
		// is no pod for the other checks to see, only its ReplicaSet's
		// condition.
		if out, err := c.Kubectl(ctx, "-n", "shop", "create", "deployment", "refused", "--image="+cluster.MinimeshImage); err != nil {
			t.Fatal(out, err)
		}
		if out, err := c.Kubectl(ctx, "-n", "shop", "wait", "--for=condition=ReplicaFailure", "replicaset", "-l", "app=refused", "--timeout=1m"); err != nil {
			t.Fatal(out, err)
		}
		// A StatefulSet has no such condition: its FailedCreate events say it.
		if out, err := c.KubectlStdin(ctx, refusedStatefulSet, "apply", "-f", "-"); err != nil {
			t.Fatal(out, err)
		}
		var code int
		var out string
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
			code, out = check()
			if strings.Contains(out, "statefulset shop/refused-db (") || time.Now().After(deadline) {
				break
			}
		}
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		want(out, "✖ injector is ready: deployment mesh/minimesh-injector has no available replica",
			"hint: kubectl -n mesh describe deployment minimesh-injector",
			`✖ no workload's pods are refused by the webhook: 2 workloads whose pods are refused: deployment shop/refused (`, `inject.minimesh.io"`,
			"statefulset shop/refused-db (Create Pod refused-db-0 in StatefulSet refused-db failed",
			"hint: with failurePolicy Fail the API server refuses pods while the injector is unreachable (kubectl -n mesh get pods")
		if out, err := c.Kubectl(ctx, "-n", "shop", "delete", "deployment/refused", "statefulset/refused-db"); err != nil {
			t.Fatal(out, err)
		}
		if out, err := c.Kubectl(ctx, "-n", "mesh", "scale", "deployment/minimesh-injector", "--replicas=1"); err != nil {
			t.Fatal(out, err)
		}
		rollout(ctx, t, c, "mesh", "minimesh-injector")
	})

	t.Run("CRD deleted", func(t *testing.T) {
		if out, err := c.Kubectl(ctx, "delete", "crd", "resiliencepolicies.minimesh.io", "--wait"); err != nil {
			t.Fatal(out, err)
		}
		code, out := check("--namespace", "mesh")
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		want(out, "✖ ResiliencePolicy CRD is installed: ", "CustomResourceDefinition resiliencepolicies.minimesh.io is missing",
			"hint: kubectl apply -f charts/minimesh/crds/")
		if out, err := c.Kubectl(ctx, "apply", "-f", filepath.Join(chart, "crds")); err != nil {
			t.Fatal(out, err)
		}
	})

	// Uninstall leaves no webhook: with failurePolicy Fail a dead one would
	// refuse every pod of a labelled namespace.
	if out, err := h.Run(ctx, "uninstall", "mm", "--namespace", "mesh", "--wait"); err != nil {
		t.Fatal(out, err)
	}
	whs, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range whs.Items {
		t.Errorf("left after helm uninstall: MutatingWebhookConfiguration %s", w.Name)
	}
	if out, err := c.Kubectl(ctx, "-n", "shop", "rollout", "restart", "deployment/web"); err != nil {
		t.Fatal(out, err)
	}
	rollout(ctx, t, c, "shop", "web")
}

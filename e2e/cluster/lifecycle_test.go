package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/e2e/internal/cluster"
)

// release is what a helm upgrade must keep: the webhook's certificate and
// the CA the API server trusts, the injector's pods, and every injected
// pod (a new certificate would make the API server refuse the webhook
// until the caBundle caught up; a rolled injector or app is an outage
// nobody asked for).
type release struct {
	tlsData  map[string][]byte
	caBundle []byte
	pods     map[string]string // namespace/name → uid
}

func releaseState(ctx context.Context, t *testing.T, c *cluster.Cluster) release {
	t.Helper()
	s, err := c.Client.CoreV1().Secrets("minimesh").Get(ctx, "minimesh-injector-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "minimesh", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := release{tlsData: s.Data, caBundle: caBundle(w), pods: map[string]string{}}
	for _, ns := range []string{"minimesh", "breaker"} {
		pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && p.Status.Phase == "Running" {
				r.pods[ns+"/"+p.Name] = string(p.UID)
			}
		}
	}
	return r
}

func caBundle(w *admissionv1.MutatingWebhookConfiguration) []byte {
	if len(w.Webhooks) == 0 {
		return nil
	}
	return w.Webhooks[0].ClientConfig.CABundle
}

// helmUpgrade upgrades the release with the same values and checks that
// it rotated nothing of the above.
func helmUpgrade(ctx context.Context, t *testing.T, c *cluster.Cluster, helm func(args ...string) (string, error)) {
	chart, err := cluster.Chart()
	if err != nil {
		t.Fatal(err)
	}
	before := releaseState(ctx, t, c)
	t0 := time.Now()
	if out, err := helm("upgrade", "minimesh", chart, "--namespace", "minimesh", "--reuse-values", "--wait", "--timeout", "3m"); err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	t.Logf("helm upgrade --reuse-values --wait: %s", time.Since(t0).Round(time.Millisecond))
	after := releaseState(ctx, t, c)
	for k, v := range before.tlsData {
		if string(after.tlsData[k]) != string(v) {
			t.Errorf("helm upgrade rotated the webhook Secret's %s", k)
		}
	}
	if string(after.caBundle) != string(before.caBundle) || len(after.caBundle) == 0 {
		t.Errorf("helm upgrade changed the webhook's caBundle (%d bytes → %d)", len(before.caBundle), len(after.caBundle))
	}
	for name, uid := range before.pods {
		if after.pods[name] != uid {
			t.Errorf("helm upgrade replaced pod %s", name)
		}
	}
	if len(after.pods) != len(before.pods) {
		t.Errorf("pods before the upgrade %v, after %v", before.pods, after.pods)
	}
}

// rolloutRestart restarts the injected backend while the app calls it at
// 50 requests a second, and at 200 gRPC calls a second from four callers
// on one grpc-go channel, each through both pods' sidecars (the backend's
// inbound one relays h2c to its app, whose graceful stop's GOAWAY reaches
// the app's sidecar through it): no call fails, and the new pod is
// injected.
func rolloutRestart(ctx context.Context, t *testing.T, c *cluster.Cluster, a agent) {
	old := onePod(ctx, t, c, "breaker", "app=flaky")
	done := make(chan loadResult, 1)
	go func() { done <- a.load(flakyURL+"/restart", 50, 20) }()
	grpcDone := make(chan spreadResult, 1)
	go func() {
		grpcDone <- a.spreadErr("grpc=1&conc=4&rps=200&seconds=20&target=flaky.breaker.svc.cluster.local:9090")
	}()
	time.Sleep(2 * time.Second) // the load is under way before the restart
	t0 := time.Now()
	if out, err := c.Kubectl(ctx, "-n", "breaker", "rollout", "restart", "deployment/flaky"); err != nil {
		t.Fatal(out, err)
	}
	rollout(ctx, t, c, "breaker", "flaky")
	t.Logf("flaky restarted in %s", time.Since(t0).Round(time.Millisecond))
	res := <-done
	t.Logf("calls during the restart: %s", res)
	g := <-grpcDone
	t.Logf("gRPC calls during the restart: %d, statuses %v, %s", g.Calls, g.Statuses, g.shares())
	if g.err != "" || g.Errors > 0 || g.Calls < 2000 || len(g.Pods) != 2 {
		t.Errorf("gRPC calls during kubectl rollout restart: %s %d of %d failed (samples %v), served by %s; want none failed of at least 2,000, both pods serving",
			g.err, g.Errors, g.Calls, g.ErrorSamples, g.shares())
	}
	if res.Sent < 500 || res.Errors != 0 || res.OK != res.Sent {
		t.Errorf("during kubectl rollout restart: %s; want every call answered 200", res)
		out, _ := c.Kubectl(ctx, "-n", "breaker", "logs", "-l", "app=app", "-c", "minimesh-proxy", "--tail", "2000")
		var failed []string
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "/restart") && !strings.Contains(l, `"status":200`) && len(failed) < 20 {
				failed = append(failed, l)
			}
		}
		t.Logf("the app's sidecar's lines for the failed calls (first 20):\n%s", strings.Join(failed, "\n"))
		out, _ = c.Kubectl(ctx, "-n", "breaker", "logs", "-l", "app=flaky", "-c", "minimesh-proxy", "--tail", "50")
		t.Logf("the new backend pod's sidecar:\n%s", out)
	}
	pods, err := c.Client.CoreV1().Pods("breaker").List(ctx, metav1.ListOptions{LabelSelector: "app=flaky"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.UID == old.UID {
			continue
		}
		if p.Annotations["minimesh.io/status"] != "injected" {
			t.Errorf("the restarted pod %s is not injected: %v", p.Name, p.Annotations)
		}
	}
}

// helmUninstall removes the release: the controller goes, and the app's
// sidecar keeps its last policies from it and keeps serving.
func helmUninstall(ctx context.Context, t *testing.T, c *cluster.Cluster, helm func(args ...string) (string, error), a agent, appPod string) {
	if out, err := helm("uninstall", "minimesh", "--namespace", "minimesh", "--wait", "--timeout", "2m"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	// The sidecar has noticed: its xDS stream ended.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		out, _ := c.Kubectl(ctx, "-n", "breaker", "logs", appPod, "-c", "minimesh-proxy")
		if strings.Contains(out, "xds: stream ended; keeping the last good policies") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("60 s after helm uninstall the sidecar has not logged the end of its xDS stream:\n%s", out)
		}
	}
	waitConfig(t, a, `"openTimeout": "2s"`)
	if r := a.get(flakyURL+"/after-uninstall", false); r.Status != 200 || !strings.Contains(r.Body, "1.1 minimesh-") {
		t.Fatalf("a call after helm uninstall: %d %q\n%s", r.Status, r.Error, r.Body)
	}
	if res := a.load(flakyURL+"/after-uninstall", 20, 3); res.Errors != 0 || res.OK != res.Sent {
		t.Fatalf("calls after helm uninstall: %s", res)
	}
}

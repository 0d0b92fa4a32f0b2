package chart_test

import (
	"context"
	"encoding/base64"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/e2e/internal/controller"
	"github.com/minimesh/minimesh/e2e/internal/kube"
	"github.com/minimesh/minimesh/e2e/internal/proc"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/internal/pki"
	"github.com/minimesh/minimesh/wellknown"
)

// check runs the built `minimesh check` and returns its exit code and
// output.
func check(t *testing.T, c *kube.Cluster, args ...string) (int, string) {
	t.Helper()
	bin, err := tools.Binary("minimesh")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"check", "--kubeconfig", c.Kubeconfig, "--namespace", release, "--timeout", "5s"}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, string(out)
}

func wantCheck(t *testing.T, out string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(out, l) {
			t.Errorf("minimesh check output lacks %q:\n%s", l, out)
		}
	}
}

// TestCheck: `minimesh check` passes on a good install and names the
// fault on broken ones.
func TestCheck(t *testing.T) {
	c := kube.Start(t)
	ctx := context.Background()

	code, out := check(t, c, "--pre")
	if code != 0 {
		t.Fatalf("check --pre before install: exit %d\n%s", code, out)
	}
	wantCheck(t, out, "✔ no minimesh webhook configuration yet", "✔ can create cluster-scoped resources")

	ctrl := controller.Start(t, c.Kubeconfig, controller.Options{})
	install(t, c, "--set", "webhook.url="+ctrl.URL, "--set", "webhook.caBundle="+base64.StdEncoding.EncodeToString(ctrl.CA.PEM))
	code, out = check(t, c)
	if code != 0 {
		t.Fatalf("check on a good install: exit %d\n%s", code, out)
	}
	wantCheck(t, out, "✔ Kubernetes version supports native sidecars", "✔ webhook CA bundle verifies the serving certificate",
		"✔ serving certificate is not about to expire", "✔ injector is ready", "✔ pods that ask for injection have the sidecar",
		"✔ policies validate")

	if code, out = check(t, c, "--pre"); code != 1 {
		t.Errorf("check --pre after install: exit %d, want 1\n%s", code, out)
	}
	wantCheck(t, out, "✖ no minimesh webhook configuration yet")

	t.Run("pod missing its sidecar", func(t *testing.T) {
		c.CreateNamespace(t, "late", nil)
		if _, err := c.Client.CoreV1().Pods("late").Create(ctx, pod("early-bird", nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		ns, err := c.Client.CoreV1().Namespaces().Get(ctx, "late", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ns.Labels[wellknown.AnnotationInject] = "enabled"
		if _, err := c.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		code, out := check(t, c)
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		wantCheck(t, out, "✖ pods that ask for injection have the sidecar: 1 pods without the sidecar: late/early-bird", "hint: ")
		if err := c.Client.CoreV1().Namespaces().Delete(ctx, "late", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := c.Client.CoreV1().Pods("late").Delete(ctx, "early-bird", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
	})

	// A typo in the namespace label: the chart's webhook never sees the
	// namespace's pods, so nothing refuses them and nothing injects them.
	// The check names the namespace, the value and the command, which is
	// then run as printed.
	t.Run("namespace label typo", func(t *testing.T) {
		c.CreateNamespace(t, "typo-label", map[string]string{wellknown.AnnotationInject: "true"})
		p, err := c.Client.CoreV1().Pods("typo-label").Create(ctx, pod("web", nil), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Spec.InitContainers) != 0 {
			t.Fatalf("the webhook injected a pod of a namespace labelled %s=true", wellknown.AnnotationInject)
		}
		fix := "kubectl label namespace typo-label minimesh.io/inject=enabled --overwrite"
		code, out := check(t, c)
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		wantCheck(t, out, `✖ namespace labels minimesh.io/inject are enabled or disabled: 1 namespaces labelled with a value the webhook ignores, not enabled or disabled: typo-label (minimesh.io/inject="true"): `+fix,
			"✔ pods that ask for injection have the sidecar")
		args := append(strings.Fields(fix)[1:], "--kubeconfig", c.Kubeconfig)
		if kout, err := exec.Command(proc.NeedTool(t, "kubectl"), args...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", fix, err, kout)
		}
		// Fixed: the pod created before is now the one to restart.
		_, out = check(t, c)
		wantCheck(t, out, "✔ namespace labels minimesh.io/inject are enabled or disabled", "✖ pods that ask for injection have the sidecar: 1 pods without the sidecar: typo-label/web")
		if err := c.Client.CoreV1().Pods("typo-label").Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		if err := c.Client.CoreV1().Namespaces().Delete(ctx, "typo-label", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("policy that does not validate", func(t *testing.T) {
		c.CreateNamespace(t, "typo", nil)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "minimesh-policies"}, Data: map[string]string{
			"geo.yaml": "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\nspec:\n  service: geo\n  timeout: fast\n",
		}}
		if _, err := c.Client.CoreV1().ConfigMaps("typo").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		code, out := check(t, c)
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		wantCheck(t, out, "✖ policies validate: typo/minimesh-policies/geo.yaml:6:12")
		if err := c.Client.CoreV1().ConfigMaps("typo").Delete(ctx, "minimesh-policies", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	// A pod injected before an upgrade keeps its old sidecar: a warning
	// (the rollout that replaces it may be under way), not a failure.
	t.Run("sidecar of an older image", func(t *testing.T) {
		c.CreateNamespace(t, "before-upgrade", nil)
		p := pod("old-sidecar", map[string]string{wellknown.AnnotationInject: "enabled"})
		always := corev1.ContainerRestartPolicyAlways
		p.Spec.InitContainers = []corev1.Container{{Name: wellknown.ProxyContainerName, Image: "minimesh.local/minimesh:0.0.1-old",
			RestartPolicy: &always, Command: []string{"/minimesh-proxy"}, Args: []string{"run"}}}
		if _, err := c.Client.CoreV1().Pods("before-upgrade").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		code, out := check(t, c)
		if code != 0 {
			t.Errorf("exit %d, want 0: a warning does not fail the check", code)
		}
		wantCheck(t, out, "‼ sidecars run the injector's images: 1 sidecars of another image: before-upgrade/old-sidecar (minimesh.local/minimesh:0.0.1-old, not ",
			"hint: they were injected before the last helm upgrade", "1 with a warning)")
		if err := c.Client.CoreV1().Pods("before-upgrade").Delete(ctx, "old-sidecar", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("webhook pointing nowhere", func(t *testing.T) {
		ctrl.Proc.Stop()
		code, out := check(t, c)
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		wantCheck(t, out, "✖ webhook CA bundle verifies the serving certificate: dial "+ctrl.URL, "✖ injector is ready: the injector at "+ctrl.URL)
	})
	uninstall(t, c)

	t.Run("expired certificate", func(t *testing.T) {
		ca, err := pki.NewCA("expired-ca")
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		old, err := ca.Issue([]string{"127.0.0.1"}, now.Add(-48*time.Hour), now.Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		stale := controller.Start(t, c.Kubeconfig, controller.Options{CA: ca, Cert: old})
		install(t, c, "--set", "webhook.url="+stale.URL, "--set", "webhook.caBundle="+base64.StdEncoding.EncodeToString(ca.PEM))
		defer uninstall(t, c)
		code, out := check(t, c)
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		wantCheck(t, out, "✔ webhook CA bundle verifies the serving certificate", "✖ serving certificate is not about to expire: expired on "+now.Add(-time.Hour).UTC().Format(time.DateOnly))
	})
}

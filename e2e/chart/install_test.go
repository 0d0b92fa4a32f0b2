package chart_test

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/e2e/internal/controller"
	"github.com/minimesh/minimesh/e2e/internal/kube"
	"github.com/minimesh/minimesh/wellknown"
)

const release = "minimesh"

// install runs helm install against the cluster; the release namespace is
// created by helm.
func install(t *testing.T, c *kube.Cluster, args ...string) {
	t.Helper()
	out, err := helm(t, append([]string{"install", release, chartDir, "--kubeconfig", c.Kubeconfig,
		"--namespace", release, "--create-namespace"}, args...)...)
	if err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
}

func uninstall(t *testing.T, c *kube.Cluster) {
	t.Helper()
	if out, err := helm(t, "uninstall", release, "--kubeconfig", c.Kubeconfig, "--namespace", release, "--wait"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
}

func pod(name string, ann map[string]string) *corev1.Pod { return kube.RestrictedPod(name, ann) }

func injected(p *corev1.Pod) bool {
	return p.Annotations[wellknown.AnnotationStatus] == wellknown.StatusInjected && len(p.Spec.InitContainers) == 1
}

// admissions is the controller's count of admissions it answered.
func admissions(t *testing.T, ctrl *controller.Controller) string {
	t.Helper()
	resp, err := http.Get(ctrl.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "minimesh_injector_admissions_total") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// TestInstall installs the chart against a real API server with the
// injector running locally behind webhook.url, and checks that the
// chart's webhook injects what asks and nothing else, then that uninstall
// leaves nothing behind.
func TestInstall(t *testing.T) {
	c := kube.Start(t)
	ctx := context.Background()
	// The local injector reads the injection config the chart renders, as
	// the chart's Deployment would.
	ctrl := controller.Start(t, c.Kubeconfig, controller.Options{Config: renderedConfig(t, "--set", "proxy.image=registry.local/minimesh:e2e")})
	c.CreateNamespace(t, "shop", nil)
	c.CreateNamespace(t, "opted", map[string]string{wellknown.AnnotationInject: "enabled"})
	c.CreateNamespace(t, "billing", nil) // values.policies has policies for it
	install(t, c, "--set", "webhook.url="+ctrl.URL, "--set", "webhook.caBundle="+base64.StdEncoding.EncodeToString(ctrl.CA.PEM),
		"-f", "testdata/policies-values.yaml")

	// The API server picks the configuration up asynchronously.
	deadline := time.Now().Add(30 * time.Second)
	for {
		p, err := c.Client.CoreV1().Pods("shop").Create(ctx, pod("probe", map[string]string{wellknown.AnnotationInject: "enabled"}), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil && injected(p) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the chart's webhook did not inject within 30 s (last: %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	create := func(ns string, p *corev1.Pod) *corev1.Pod {
		t.Helper()
		got, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create %s/%s: %v", ns, p.Name, err)
		}
		return got
	}
	if p := create("shop", pod("annotated", map[string]string{wellknown.AnnotationInject: "enabled"})); !injected(p) {
		t.Error("annotated pod not injected through the chart's webhook")
	} else if img := p.Spec.InitContainers[0].Image; img != "registry.local/minimesh:e2e" {
		t.Errorf("sidecar image %q, want the chart's proxy.image", img)
	}
	if p := create("opted", pod("plain", nil)); !injected(p) {
		t.Error("pod of an opted-in namespace not injected")
	}
	before := admissions(t, ctrl)
	if p := create("opted", pod("out", map[string]string{wellknown.AnnotationInject: "disabled"})); injected(p) {
		t.Error("opted-out pod injected")
	}
	if p := create("shop", pod("plain", nil)); injected(p) {
		t.Error("unannotated pod injected")
	}
	if p := create(release, pod("own", map[string]string{wellknown.AnnotationInject: "enabled"})); injected(p) {
		t.Error("pod in the release namespace injected")
	}
	// The match conditions and namespace selector kept the API server from
	// calling the injector at all for these three.
	if after := admissions(t, ctrl); after != before {
		t.Errorf("the injector was called for pods that did not ask:\nbefore %s\nafter  %s", before, after)
	}
	// A value of the annotation the injector does not know reaches it and
	// is refused, naming the annotation: not let through without a sidecar.
	for _, v := range []string{"true", "Enabled"} {
		_, err := c.Client.CoreV1().Pods("shop").Create(ctx, pod("typo-"+strings.ToLower(v), map[string]string{wellknown.AnnotationInject: v}), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), wellknown.AnnotationInject) {
			t.Errorf("pod annotated %s: %q: %v, want it refused naming the annotation", wellknown.AnnotationInject, v, err)
		}
	}

	// The policies of values.policies: the objects the control plane
	// serves, each accepted by the controller, and the ConfigMap the
	// sidecars load until it answers.
	if cm, err := c.Client.CoreV1().ConfigMaps("shop").Get(ctx, "minimesh-policies", metav1.GetOptions{}); err != nil || len(cm.Data) != 2 {
		t.Errorf("policy ConfigMap in shop: %v %v", err, cm)
	}
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	rp := schema.GroupVersionResource{Group: "minimesh.io", Version: "v1alpha1", Resource: "resiliencepolicies"}
	for _, name := range []string{"shop/nominatim", "shop/default", "billing/payments"} {
		ns, n, _ := strings.Cut(name, "/")
		var status any
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			u, err := dyn.Resource(rp).Namespace(ns).Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				status = err
				continue
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				if m, _ := c.(map[string]any); m["type"] == "Accepted" {
					status = m["status"]
				}
			}
			if status == "True" {
				break
			}
		}
		if status != "True" {
			t.Errorf("ResiliencePolicy %s from values.policies: Accepted %v, want True", name, status)
		}
	}

	uninstall(t, c)
	assertNothingLeft(t, c)
}

// renderedConfig is the injection config of the chart's ConfigMap.
func renderedConfig(t *testing.T, args ...string) string {
	t.Helper()
	out, err := template(t, append([]string{"--show-only", "templates/config.yaml"}, args...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal([]byte(out), &cm); err != nil || cm.Data["config.yaml"] == "" {
		t.Fatalf("rendered config map: %v\n%s", err, out)
	}
	return cm.Data["config.yaml"]
}

// assertNothingLeft lists every kind the chart renders, in every
// namespace, for objects of the release.
func assertNothingLeft(t *testing.T, c *kube.Cluster) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release}
	for _, gvr := range []schema.GroupVersionResource{
		{Version: "v1", Resource: "configmaps"}, {Version: "v1", Resource: "secrets"},
		{Version: "v1", Resource: "services"}, {Version: "v1", Resource: "serviceaccounts"},
		{Version: "v1", Resource: "pods"},
		{Group: "apps", Version: "v1", Resource: "deployments"},
		{Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
		{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "mutatingwebhookconfigurations"},
		{Group: "minimesh.io", Version: "v1alpha1", Resource: "resiliencepolicies"},
	} {
		list, err := dyn.Resource(gvr).List(context.Background(), sel)
		if err != nil {
			t.Fatalf("list %s: %v", gvr.Resource, err)
		}
		for _, o := range list.Items {
			t.Errorf("left after uninstall: %s %s/%s", gvr.Resource, o.GetNamespace(), o.GetName())
		}
	}
}

// TestUpgradeKeepsCA installs with TLS generated by helm, upgrades with
// other values, and expects the same CA and certificate: an upgrade must
// never leave the API server distrusting the injector.
func TestUpgradeKeepsCA(t *testing.T) {
	c := kube.Start(t)
	ctx := context.Background()
	install(t, c)
	read := func() (ca, crt string, bundles []string) {
		s, err := c.Client.CoreV1().Secrets(release).Get(ctx, "minimesh-injector-tls", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		w, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "minimesh", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, wh := range w.Webhooks {
			bundles = append(bundles, string(wh.ClientConfig.CABundle))
		}
		return string(s.Data["ca.crt"]), string(s.Data["tls.crt"]), bundles
	}
	// The certificate helm generated verifies for the Service's name that
	// the API server dials; no kubelet runs, so the injector is not ready.
	code, out := check(t, c)
	if code != 1 {
		t.Errorf("check: exit %d, want 1", code)
	}
	wantCheck(t, out, "✔ webhook CA bundle verifies the serving certificate", "✔ serving certificate is not about to expire",
		"✖ injector is ready: deployment minimesh/minimesh-injector has no available replica")
	ca1, crt1, b1 := read()
	if ca1 == "" || crt1 == "" || len(b1) != 2 || b1[0] != ca1 {
		t.Fatalf("after install: CA %d bytes, cert %d bytes, bundles match: %v", len(ca1), len(crt1), len(b1) == 2 && b1[0] == ca1)
	}
	var err error
	out, err = helm(t, "upgrade", release, chartDir, "--kubeconfig", c.Kubeconfig, "--namespace", release,
		"--set", "injector.replicas=3", "--set", "webhook.failurePolicy=Fail")
	if err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	ca2, crt2, b2 := read()
	if ca2 != ca1 || crt2 != crt1 || b2[0] != ca1 || b2[1] != ca1 {
		t.Fatal("helm upgrade changed the CA or the serving certificate")
	}
	// A bad value is refused by the schema and changes nothing.
	out, err = helm(t, "upgrade", release, chartDir, "--kubeconfig", c.Kubeconfig, "--namespace", release,
		"--reuse-values", "--set", "webhook.failurePolicy=Sometimes")
	if err == nil || !strings.Contains(out, "/webhook/failurePolicy") {
		t.Fatalf("upgrade with a bad value: %v\n%s", err, out)
	}
	if w, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "minimesh", metav1.GetOptions{}); err != nil || string(*w.Webhooks[0].FailurePolicy) != "Fail" {
		t.Fatalf("after a refused upgrade: %v", err)
	}
	d, err := c.Client.AppsV1().Deployments(release).Get(ctx, "minimesh-injector", metav1.GetOptions{})
	if err != nil || *d.Spec.Replicas != 3 {
		t.Fatalf("the upgrade's values did not apply: %v", err)
	}
	uninstall(t, c)
	assertNothingLeft(t, c)
}

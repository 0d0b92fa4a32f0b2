// Package export_test applies `minimesh policy export --to linkerd` to a
// real API server with the Gateway API's HTTPRoute CRD installed: the
// exported objects pass its schema and CEL rules, and the Service
// annotations merge into existing Services without touching their spec.
package export_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/minimesh/minimesh/e2e/internal/kube"
	"github.com/minimesh/minimesh/e2e/internal/tools"
)

// gatewayAPI is the Gateway API release whose HTTPRoute CRD Linkerd reads.
const gatewayAPI = "sigs.k8s.io/gateway-api@v1.6.3"

// httpRouteCRD fetches the CRD from the Go module proxy (the module holds
// the release's manifests), so that no third-party file is copied here.
func httpRouteCRD(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", gatewayAPI).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", gatewayAPI, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download %s: %v %s", gatewayAPI, err, out)
	}
	return filepath.Join(mod.Dir, "config", "crd", "standard", "gateway.networking.k8s.io_httproutes.yaml")
}

func TestLinkerdExportApplies(t *testing.T) {
	c := kube.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := c.Kubectl(ctx, "apply", "--server-side", "-f", httpRouteCRD(t)); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := c.WaitEstablished(ctx, "httproutes.gateway.networking.k8s.io"); err != nil {
		t.Fatal(err)
	}
	for ns, svc := range map[string]string{"bakery-ia": "nominatim-service", "identity": "auth"} {
		c.CreateNamespace(t, ns, nil)
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: svc}, Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": svc}, Ports: []corev1.ServicePort{{Name: "http", Port: 8000}},
		}}
		if _, err := c.Client.CoreV1().Services(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	bin, err := tools.Binary("minimesh")
	if err != nil {
		t.Fatal(err)
	}
	root, err := tools.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	export, err := exec.Command(bin, "policy", "export", "--to", "linkerd", filepath.Join(root, "policy", "linkerd", "testdata", "policies.yaml")).Output()
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	if out, err := c.KubectlStdin(ctx, string(export), "apply", "--server-side", "--field-manager=minimesh-export", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply of the export: %v\n%s", err, out)
	}

	svc, err := c.Client.CoreV1().Services("bakery-ia").Get(ctx, "nominatim-service", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// failure accrual from outlierDetection (consecutiveFailures 3,
	// baseEjectionTime 1500ms, maxEjectionTime 2m)
	if a := svc.Annotations; a["balancer.linkerd.io/failure-accrual-consecutive-max-failures"] != "3" || a["balancer.linkerd.io/failure-accrual-consecutive-min-penalty"] != "1500ms" ||
		a["balancer.linkerd.io/failure-accrual-consecutive-max-penalty"] != "2m" || len(svc.Spec.Ports) != 1 || svc.Spec.Selector["app"] != "nominatim-service" {
		t.Fatalf("service after the export: annotations %v, spec %+v", svc.Annotations, svc.Spec)
	}
	// auth has outlierDetection off: no failure accrual, its gRPC retries only
	auth, err := c.Client.CoreV1().Services("identity").Get(ctx, "auth", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a := auth.Annotations; a["balancer.linkerd.io/failure-accrual"] != "" || a["retry.linkerd.io/grpc"] != "unavailable" {
		t.Fatalf("auth after the export: annotations %v", a)
	}
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	routes := dyn.Resource(schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}).
		Namespace("bakery-ia")
	route, err := routes.Get(ctx, "nominatim", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a := route.GetAnnotations(); a["timeout.linkerd.io/request"] != "2s" || a["retry.linkerd.io/limit"] != "2" {
		t.Fatalf("route annotations %v", a)
	}
	// The retrying route matches only what minimesh retries (a method or
	// an Idempotency-Key each); the rest, POST among them, go to the
	// second route, with the timeout and no retries.
	matches, _, _ := unstructured.NestedSlice(route.Object, "spec", "rules")
	if len(matches) != 1 {
		t.Fatalf("route nominatim has %d rules, want 1", len(matches))
	}
	ms, _, _ := unstructured.NestedSlice(matches[0].(map[string]any), "matches")
	for _, m := range ms {
		m := m.(map[string]any)
		if m["method"] == nil && m["headers"] == nil || m["method"] == "POST" {
			t.Errorf("the retrying route matches %v: not only requests safe to send again", m)
		}
	}
	rest, err := routes.Get(ctx, "nominatim-no-retry", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a := rest.GetAnnotations(); a["timeout.linkerd.io/request"] != "2s" || a["retry.linkerd.io/limit"] != "" || a["retry.linkerd.io/http"] != "" {
		t.Fatalf("route nominatim-no-retry annotations %v, want the timeout and no retries", a)
	}
}

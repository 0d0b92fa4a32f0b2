package chart_test

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/e2e/internal/controller"
	"github.com/minimesh/minimesh/e2e/internal/kube"
)

// TestCheckOutdatedCRD: a release whose ResiliencePolicy CRD predates
// status.lastValidSpec (installed by an older chart: helm upgrade never
// updates a CRD, and helm install keeps one it finds) fails `minimesh
// check`, naming the fields the API server drops and the command that
// applies the chart's CRD; after that command the check passes. The API
// server is a real one: it is shown to drop the field first, the fault
// the check reports.
func TestCheckOutdatedCRD(t *testing.T) {
	c := kube.Start(t)
	ctx := context.Background()
	// The API server warns of the fields it drops; the test looks at the
	// object instead.
	cfg := rest.CopyConfig(c.Config)
	cfg.WarningHandler = rest.NoWarnings{}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	// The chart's CRD without the two fields: the CRD of a chart from
	// before 2026-12-06.
	data, err := os.ReadFile(filepath.Join(chartDir, "crds", "resiliencepolicies.minimesh.io.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	crd := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &crd.Object); err != nil {
		t.Fatal(err)
	}
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	for _, v := range versions {
		unstructured.RemoveNestedField(v.(map[string]any), "schema", "openAPIV3Schema", "properties", "status", "properties", "lastValidSpec")
		unstructured.RemoveNestedField(v.(map[string]any), "schema", "openAPIV3Schema", "properties", "status", "properties", "lastValidGeneration")
	}
	if err := unstructured.SetNestedSlice(crd.Object, versions, "spec", "versions"); err != nil {
		t.Fatal(err)
	}
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if _, err := d.Resource(crds).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitEstablished(ctx, "resiliencepolicies.minimesh.io"); err != nil {
		t.Fatal(err)
	}

	// The fault: the controller's record of the last valid version is
	// dropped without an error.
	rps := d.Resource(schema.GroupVersionResource{Group: "minimesh.io", Version: "v1alpha1", Resource: "resiliencepolicies"}).Namespace("default")
	rp := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "minimesh.io/v1alpha1", "kind": "ResiliencePolicy",
		"metadata": map[string]any{"name": "geo"}, "spec": map[string]any{"service": "geo"},
	}}
	if rp, err = rps.Create(ctx, rp, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rp.Object["status"] = map[string]any{"observedGeneration": int64(1), "lastValidGeneration": int64(1), "lastValidSpec": map[string]any{"service": "geo"}}
	got, err := rps.UpdateStatus(ctx, rp, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, kept, _ := unstructured.NestedFieldNoCopy(got.Object, "status", "lastValidSpec"); kept {
		t.Fatalf("the old CRD keeps status.lastValidSpec: %v", got.Object["status"])
	}

	ctrl := controller.Start(t, c.Kubeconfig, controller.Options{})
	install(t, c, "--set", "webhook.url="+ctrl.URL, "--set", "webhook.caBundle="+base64.StdEncoding.EncodeToString(ctrl.CA.PEM))
	code, out := check(t, c)
	if code != 1 {
		t.Errorf("check with the old CRD: exit %d, want 1", code)
	}
	wantCheck(t, out, "✔ ResiliencePolicy CRD is installed",
		"✖ ResiliencePolicy CRD is up to date: the installed CustomResourceDefinition resiliencepolicies.minimesh.io (v1alpha1) lacks status.lastValidSpec, status.lastValidGeneration: ",
		"hint: apply the chart's CRD: kubectl apply -f charts/minimesh/crds/")

	// The hint's command, from the chart's directory's parent.
	if out, err := c.Kubectl(ctx, "apply", "-f", filepath.Join(chartDir, "crds")); err != nil {
		t.Fatal(out, err)
	}
	code, out = check(t, c)
	if code != 0 {
		t.Errorf("check with the chart's CRD: exit %d, want 0\n%s", code, out)
	}
	wantCheck(t, out, "✔ ResiliencePolicy CRD is up to date")
	uninstall(t, c)
}

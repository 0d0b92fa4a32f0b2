package check

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"
)

// chartCRD is the chart's ResiliencePolicy CRD, as the API server
// returns it.
func chartCRD(t *testing.T) *unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile("../../charts/minimesh/crds/resiliencepolicies.minimesh.io.yaml")
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

// statusSchema is the CRD's schema of status (of v1alpha1), for the cases
// to change.
func statusSchema(t *testing.T, u *unstructured.Unstructured) map[string]any {
	t.Helper()
	for _, v := range u.Object["spec"].(map[string]any)["versions"].([]any) {
		m := v.(map[string]any)
		if m["name"] == "v1alpha1" {
			return m["schema"].(map[string]any)["openAPIV3Schema"].(map[string]any)["properties"].(map[string]any)["status"].(map[string]any)
		}
	}
	t.Fatal("no v1alpha1 in the chart's CRD")
	return nil
}

// TestCRDCurrent: a CRD from before status.lastValidSpec (Helm installs a
// CRD but never upgrades it) fails the check, naming the fields the API
// server drops; the chart's own CRD passes, so the check's list of fields
// cannot drift from the chart.
func TestCRDCurrent(t *testing.T) {
	tests := []struct {
		name   string
		change func(status map[string]any)
		err    string // "" passes
	}{
		{"the chart's", func(map[string]any) {}, ""},
		{"before lastValidSpec", func(s map[string]any) {
			props := s["properties"].(map[string]any)
			delete(props, "lastValidSpec")
			delete(props, "lastValidGeneration")
		}, "the installed CustomResourceDefinition resiliencepolicies.minimesh.io (v1alpha1) lacks status.lastValidSpec, status.lastValidGeneration: it predates them"},
		{"one of the two", func(s map[string]any) {
			delete(s["properties"].(map[string]any), "lastValidGeneration")
		}, "lacks status.lastValidGeneration: "},
		{"a status that keeps every field", func(s map[string]any) {
			delete(s, "properties")
			s["x-kubernetes-preserve-unknown-fields"] = true
		}, ""},
		{"no status at all", func(s map[string]any) {
			for k := range s {
				delete(s, k)
			}
		}, "lacks status.lastValidSpec, status.lastValidGeneration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			crd := chartCRD(t)
			tt.change(statusSchema(t, crd))
			d := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
				map[schema.GroupVersionResource]string{resiliencePolicies: "ResiliencePolicyList", crds: "CustomResourceDefinitionList"}, crd)
			got := verdicts(Run(context.Background(), Options{Client: cluster(t, "37", 300*24*time.Hour), Dynamic: d, Namespace: "minimesh"}))
			v, ran := got["ResiliencePolicy CRD is up to date"]
			switch {
			case !ran:
				t.Fatalf("not checked: %v", got)
			case tt.err == "" && v != "ok":
				t.Errorf("failed: %s", v)
			case tt.err != "" && !strings.Contains(v, tt.err):
				t.Errorf("verdict %q, want %q", v, tt.err)
			}
		})
	}
}

// TestCRDUnreadable: a CRD the checker may not read fails the check with
// the API server's reason (the chart's helm test may: its role names the
// CRD).
func TestCRDUnreadable(t *testing.T) {
	d := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{resiliencePolicies: "ResiliencePolicyList", crds: "CustomResourceDefinitionList"})
	d.PrependReactor("get", "customresourcedefinitions", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(crds.GroupResource(), "resiliencepolicies.minimesh.io", nil)
	})
	err := crdCurrent(context.Background(), d)
	if err == nil || !strings.Contains(err.Error(), "read the CustomResourceDefinition resiliencepolicies.minimesh.io: ") || !apierrors.IsForbidden(err) {
		t.Fatalf("crdCurrent = %v", err)
	}
}

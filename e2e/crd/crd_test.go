// Package crd_test installs the ResiliencePolicy CRD into a real API server
// and holds it to the same rules as the policy decoder: every policy the
// decoder accepts is accepted and defaulted to the same values; every
// policy it refuses for a value is refused at apply, with a message naming
// the field.
package crd_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/e2e/internal/kube"
	"github.com/minimesh/minimesh/e2e/internal/tools"
	"github.com/minimesh/minimesh/policy"
)

var gvr = schema.GroupVersionResource{Group: "minimesh.io", Version: "v1alpha1", Resource: "resiliencepolicies"}

// install applies the chart's CRD and waits until it serves.
func install(t *testing.T) (*kube.Cluster, dynamic.ResourceInterface, string) {
	t.Helper()
	c := kube.Start(t)
	root, err := tools.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := c.Kubectl(ctx, "apply", "-f", filepath.Join(root, "charts", "minimesh", "crds")); err != nil {
		t.Fatalf("install the CRD: %v\n%s", err, out)
	}
	if err := c.WaitEstablished(ctx, "resiliencepolicies.minimesh.io"); err != nil {
		t.Fatal(err)
	}
	c.CreateNamespace(t, "shop", nil)
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	return c, dyn.Resource(gvr).Namespace("shop"), root
}

// object is p as the API server would receive it from kubectl.
func object(t *testing.T, name string, spec any) *unstructured.Unstructured {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": policy.APIVersion, "kind": policy.Kind,
		"metadata": map[string]any{"name": name}, "spec": m,
	}}
}

// TestGoodPoliciesAgree: the decoder's good policies are accepted, and what
// the API server stores, defaults included, decodes to the same spec.
func TestGoodPoliciesAgree(t *testing.T) {
	_, rc, root := install(t)
	ctx := context.Background()
	pols, err := policy.Load(filepath.Join(root, "policy", "testdata", "good"))
	if err != nil {
		t.Fatal(err)
	}
	// A policy with nothing but its service: every default comes from the
	// CRD on one side and from the decoder on the other.
	bare, err := policy.Decode("bare.yaml", []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nspec: {service: bare, retries: {attempts: 2}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	pols = append(pols, bare...)
	if len(pols) < 5 {
		t.Fatalf("only %d good policies", len(pols))
	}
	for i, p := range pols {
		// Only what a user writes goes in: the raw spec, not the decoded one.
		raw := map[string]any{}
		b, _ := json.Marshal(p.Spec)
		_ = json.Unmarshal(b, &raw)
		name := "p" + string(rune('a'+i))
		stored, err := rc.Create(ctx, object(t, name, raw), metav1.CreateOptions{FieldValidation: "Strict"})
		if err != nil {
			t.Errorf("%s (%s): refused: %v", p.Spec.Service, p.Source, err)
			continue
		}
		y, _ := yaml.Marshal(stored.Object)
		back, err := policy.Decode("stored", y)
		if err != nil {
			t.Errorf("%s: the stored object does not decode: %v\n%s", p.Spec.Service, err, y)
			continue
		}
		if !reflect.DeepEqual(back[0].Spec, p.Spec) {
			t.Errorf("%s: stored spec differs from the decoder's:\nstored  %+v\ndecoder %+v", p.Spec.Service, back[0].Spec, p.Spec)
		}
	}
	// What a user writes, partly: the API server's defaults and the
	// decoder's agree, including the ejection time derived from the other
	// (which a per-field default in the CRD would contradict).
	for i, raw := range []string{
		"{service: od-a}",
		"{service: od-b, outlierDetection: {consecutiveFailures: 0}}",
		"{service: od-c, outlierDetection: {baseEjectionTime: 10m}}",
		"{service: od-d, outlierDetection: {maxEjectionTime: 10s}}",
		"{service: od-e, outlierDetection: {baseEjectionTime: 1s, maxEjectionPercent: 100}}",
		"{service: od-f, outlierDetection: {baseEjectionTime: 1ms, maxEjectionTime: 24h}}",
		"{service: od-g, retries: {attempts: 1}, outlierDetection: {}}",
		"{service: to-a, timeout: 24h, retries: {attempts: 1, perTryTimeout: 24h}}",
		"{service: bo-a, retries: {attempts: 1, backoff: {base: 1s}}}",
		"{service: bo-b, retries: {attempts: 1, backoff: {max: 10ms}}}",
		"{service: bo-c, retries: {attempts: 1, backoff: {}}}",
	} {
		want, err := policy.Decode("raw.yaml", []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nspec: "+raw+"\n"))
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		var spec map[string]any
		if err := yaml.Unmarshal([]byte(raw), &spec); err != nil {
			t.Fatal(err)
		}
		stored, err := rc.Create(ctx, object(t, "raw-"+string(rune('a'+i)), spec), metav1.CreateOptions{FieldValidation: "Strict"})
		if err != nil {
			t.Errorf("%s: refused: %v", raw, err)
			continue
		}
		y, _ := yaml.Marshal(stored.Object)
		back, err := policy.Decode("stored", y)
		if err != nil {
			t.Errorf("%s: the stored object does not decode: %v\n%s", raw, err, y)
			continue
		}
		if !reflect.DeepEqual(back[0].Spec, want[0].Spec) {
			t.Errorf("%s: stored spec differs from the decoder's:\nstored  %+v\ndecoder %+v", raw, *back[0].Spec.OutlierDetection, *want[0].Spec.OutlierDetection)
		}
	}

	// The defaults are visible to kubectl.
	bareObj, err := rc.Get(ctx, "p"+string(rune('a'+len(pols)-1)), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n, _, _ := unstructured.NestedInt64(bareObj.Object, "spec", "circuitBreaker", "consecutiveFailures"); n != 5 {
		t.Errorf("defaulted consecutiveFailures = %d, want 5", n)
	}
	odObj, err := rc.Get(ctx, "raw-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if od, _, _ := unstructured.NestedMap(odObj.Object, "spec", "outlierDetection"); !reflect.DeepEqual(od, map[string]any{
		"consecutiveFailures": int64(5), "baseEjectionTime": "30s", "maxEjectionTime": "300s", "maxEjectionPercent": int64(50),
	}) {
		t.Errorf("defaulted outlierDetection = %v", od)
	}
}

// TestBadPoliciesRefused: values the decoder refuses are refused at apply,
// and the message names the field.
func TestBadPoliciesRefused(t *testing.T) {
	c, rc, root := install(t)
	ctx := context.Background()
	tests := []struct {
		spec  string
		field string
		msg   string
	}{
		{"{service: geo, timeout: fast}", "spec.timeout", "must be a duration greater than zero"},
		{"{service: geo, timeout: 0s}", "spec.timeout", "must be a duration greater than zero"},
		{"{service: geo, timeout: 25h}", "spec.timeout", "at most 24h"},
		{"{service: geo, retries: {attempts: 1, perTryTimeout: 2562047h}}", "spec.retries.perTryTimeout", "at most 24h"},
		{"{service: geo, retries: {attempts: 11}}", "spec.retries.attempts", "less than or equal to 10"},
		{"{service: geo, retries: {attempts: 1, retryOn: [6xx]}}", "spec.retries.retryOn[0]", "should match"},
		{"{service: geo, retries: {attempts: 1, retryOn: [grpc-ok]}}", "spec.retries.retryOn[0]", "should match"},
		{"{service: geo, retries: {attempts: 1, retryOn: []}}", "spec.retries.retryOn", "must not be empty"},
		{"{service: geo, timeout: 1s, retries: {attempts: 1, perTryTimeout: 2s}}", "spec.retries.perTryTimeout", "must not be longer than timeout"},
		{"{service: geo, retries: {attempts: 1, backoff: {base: 100ms, max: 50ms}}}", "spec.retries.backoff.max", "max must be at least base"},
		{"{service: geo, retries: {attempts: 1, budget: {ratio: 1.5}}}", "spec.retries.budget.ratio", "less than or equal to 1"},
		{"{service: geo, circuitBreaker: {consecutiveFailures: 0}}", "spec.circuitBreaker.consecutiveFailures", "greater than or equal to 1"},
		{"{service: geo, circuitBreaker: {failureRate: {threshold: 0, minRequests: 1, window: 10s}}}", "spec.circuitBreaker.failureRate.threshold", "must be greater than 0"},
		{"{service: geo, circuitBreaker: {failureRate: {threshold: 0.5}}}", "spec.circuitBreaker.failureRate.minRequests", "Required value"},
		{"{service: geo, circuitBreaker: {failOn: []}}", "spec.circuitBreaker.failOn", "must not be empty"},
		{"{service: geo, circuitBreaker: {openTimeout: 25h}}", "spec.circuitBreaker.openTimeout", "at most 24h"},
		{"{service: geo, circuitBreaker: {failureRate: {threshold: 0.5, minRequests: 1, window: 2400000h}}}", "spec.circuitBreaker.failureRate.window", "at most 24h"},
		{"{service: geo, retries: {attempts: 1, backoff: {base: 25h}}}", "spec.retries.backoff.base", "at most 24h"},
		{"{service: geo, outlierDetection: {consecutiveFailures: -1}}", "spec.outlierDetection.consecutiveFailures", "greater than or equal to 0"},
		{"{service: geo, outlierDetection: {consecutiveFailures: 1001}}", "spec.outlierDetection.consecutiveFailures", "less than or equal to 1000"},
		{"{service: geo, outlierDetection: {baseEjectionTime: 500us}}", "spec.outlierDetection.baseEjectionTime", "from 1ms to 1h"},
		{"{service: geo, outlierDetection: {baseEjectionTime: 2h, maxEjectionTime: 3h}}", "spec.outlierDetection.baseEjectionTime", "from 1ms to 1h"},
		{"{service: geo, outlierDetection: {maxEjectionTime: 25h}}", "spec.outlierDetection.maxEjectionTime", "from 1ms to 24h"},
		{"{service: geo, outlierDetection: {baseEjectionTime: 1m, maxEjectionTime: 30s}}", "spec.outlierDetection.maxEjectionTime", "at least baseEjectionTime"},
		{"{service: geo, outlierDetection: {maxEjectionPercent: 0}}", "spec.outlierDetection.maxEjectionPercent", "greater than or equal to 1"},
		{"{service: geo, outlierDetection: {maxEjectionPercent: 101}}", "spec.outlierDetection.maxEjectionPercent", "less than or equal to 100"},
		{"{service: geo, outlierDetection: {interval: 1s}}", "spec.outlierDetection.interval", "unknown field"},
		{"{service: Geo_Service}", "spec.service", "lower-case host[:port]"},
		{"{service: 'geo:70000'}", "spec.service", "the port must be 1-65535"},
		{"{timeout: 2s}", "spec.service", "Required value"},
		{"{service: geo, timeout: 2s, retries: {attempts: 1, retryOn: [503], jitter: true}}", "spec.retries.jitter", "unknown field"},
	}
	for i, tt := range tests {
		var spec map[string]any
		if err := yaml.Unmarshal([]byte(tt.spec), &spec); err != nil {
			t.Fatal(err)
		}
		_, err := rc.Create(ctx, object(t, "bad-"+string(rune('a'+i)), spec), metav1.CreateOptions{FieldValidation: "Strict"})
		if err == nil {
			t.Errorf("%s: accepted", tt.spec)
			continue
		}
		if !strings.Contains(err.Error(), tt.field) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: %v\nwant %s and %q", tt.spec, err, tt.field, tt.msg)
		}
	}

	// The decoder's bad files for values: every document is refused by
	// kubectl apply too.
	docs := 0
	for _, f := range []string{"bounds.yaml", "conditions.yaml", "durations.yaml", "failure-rate-incomplete.yaml", "missing-service.yaml", "wrong-types.yaml"} {
		data, err := os.ReadFile(filepath.Join(root, "policy", "testdata", "bad", f))
		if err != nil {
			t.Fatal(err)
		}
		for j, doc := range strings.Split(string(data), "\n---\n") {
			var m map[string]any
			if err := yaml.Unmarshal([]byte(doc), &m); err != nil || m == nil {
				continue
			}
			docs++
			m["metadata"] = map[string]any{"name": strings.TrimSuffix(f, ".yaml") + "-" + string(rune('a'+j))}
			b, _ := yaml.Marshal(m)
			if out, err := c.KubectlStdin(ctx, string(b), "apply", "-n", "shop", "-f", "-"); err == nil {
				t.Errorf("%s document %d: accepted by the API server, refused by the decoder:\n%s\n%s", f, j+1, doc, out)
			}
		}
	}
	if docs < 10 {
		t.Fatalf("only %d bad documents tried", docs)
	}
	t.Logf("%d bad documents of the decoder's tests refused by the API server too", docs)
}

// TestPrinterColumns: kubectl get shows the service, timeout and breaker.
func TestPrinterColumns(t *testing.T) {
	c, rc, _ := install(t)
	ctx := context.Background()
	var spec map[string]any
	_ = yaml.Unmarshal([]byte("{service: nominatim-service, timeout: 2s}"), &spec)
	if _, err := rc.Create(ctx, object(t, "nominatim", spec), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, err := c.Kubectl(ctx, "get", "rp", "-n", "shop")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SERVICE", "TIMEOUT", "FAILURES", "OPEN", "ACCEPTED", "nominatim-service", "2s", "5", "60s"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl get rp lacks %q:\n%s", want, out)
		}
	}
}

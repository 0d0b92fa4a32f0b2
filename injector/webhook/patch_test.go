package webhook

import (
	"encoding/json"
	"reflect"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestUnknownFieldsStayOnTheirElements: a pod from an API server newer
// than the webhook's k8s.io/api (after a cluster upgrade) carries fields
// the webhook cannot decode. The sidecar goes first among the init
// containers; the answer's patch, applied as the API server applies it,
// must leave each of those fields on its own element: the patch computed
// as a diff of re-encoded pods moved the user's init container's field
// onto the sidecar and dropped it from the user's container.
func TestUnknownFieldsStayOnTheirElements(t *testing.T) {
	raw := []byte(`{"metadata":{"generateName":"web-","annotations":{"minimesh.io/inject":"enabled"}},` +
		`"spec":{"futureSpec":"pod's",` +
		`"initContainers":[{"name":"migrate","image":"m","resources":{},"futureField":"mine"}],` +
		`"containers":[{"name":"app","image":"x","resources":{},"futureField":"app's","env":[{"name":"LOG","value":"1","futureField":"env's"}]}],` +
		`"volumes":[{"name":"data","emptyDir":{},"futureField":"volume's"}]},"status":{}}`)
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "u", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Namespace: "shop", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw}},
	})
	if err != nil {
		t.Fatal(err)
	}
	w := post(newHandler(), body)
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
		t.Fatalf("%d %s: %v", w.Code, w.Body, err)
	}
	if out.Response == nil || out.Response.Patch == nil {
		t.Fatalf("not injected: %+v", out.Response)
	}
	p, err := jsonpatch.DecodePatch(out.Response.Patch)
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("apply: %v\npatch: %s", err, out.Response.Patch)
	}
	type element = map[string]any
	var pod struct {
		Spec struct {
			FutureSpec     any       `json:"futureSpec"`
			InitContainers []element `json:"initContainers"`
			Containers     []element `json:"containers"`
			Volumes        []element `json:"volumes"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(got, &pod); err != nil {
		t.Fatal(err)
	}
	// Each element by name: the field is on the user's own, and on
	// nothing that minimesh added.
	fields := map[string]any{}
	for _, list := range [][]element{pod.Spec.InitContainers, pod.Spec.Containers, pod.Spec.Volumes} {
		for _, e := range list {
			if v, ok := e["futureField"]; ok {
				fields[e["name"].(string)] = v
			}
		}
	}
	var env any
	if len(pod.Spec.Containers) == 1 {
		if es, _ := pod.Spec.Containers[0]["env"].([]any); len(es) > 0 {
			env = es[0].(element)["futureField"]
		}
	}
	want := map[string]any{"migrate": "mine", "app": "app's", "data": "volume's"}
	if !reflect.DeepEqual(fields, want) || pod.Spec.FutureSpec != "pod's" || env != "env's" || len(pod.Spec.InitContainers) != 2 {
		t.Fatalf("unknown fields by element %v, want %v; spec's %v, env's %v; %d init containers\npatch: %s\npatched: %s",
			fields, want, pod.Spec.FutureSpec, env, len(pod.Spec.InitContainers), out.Response.Patch, got)
	}
}

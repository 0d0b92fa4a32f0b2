package injector

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// patchOp is one RFC 6902 operation. Patch writes only adds: an add on an
// object member that exists replaces its value, so one op covers an
// annotation or env value whether or not the pod had it.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// Patch is the RFC 6902 JSON patch, the form an AdmissionResponse carries,
// that turns before, the pod as decoded from the AdmissionRequest, into
// after, Inject's result for it.
//
// It is written as explicit operations at the places Inject changed, as
// Linkerd's injector writes its patch, never as a diff of the two pods
// re-encoded: the API server may be newer than the injector's k8s.io/api,
// and a field the injector does not know is not in the decoded pod. A diff
// saw the init containers shifted by the sidecar put first, rewrote the
// user's first init container field by field into the sidecar and added
// the user's container again without that field: the field moved onto the
// sidecar and was lost from the user's container. An add at an index
// instead shifts the elements the API server holds untouched, whatever
// they contain. The indexes are the decoded pod's, which are those of the
// JSON the API server sent (decoding keeps arrays in order).
//
// Patch knows the changes Inject makes: annotations and labels added or
// set, init containers put first, volumes appended, env entries appended to
// a container or init container and an entry's value rewritten
// (JAVA_TOOL_OPTIONS). Any other difference between the pods is an error,
// rather than a patch that silently leaves it out.
func Patch(before, after *corev1.Pod) ([]byte, error) {
	var ops []patchOp
	var err error
	if ops, err = mapOps(ops, "/metadata/annotations", before.Annotations, after.Annotations); err != nil {
		return nil, err
	}
	if ops, err = mapOps(ops, "/metadata/labels", before.Labels, after.Labels); err != nil {
		return nil, err
	}
	bs, as := &before.Spec, &after.Spec
	added := len(as.InitContainers) - len(bs.InitContainers)
	if added < 0 {
		return nil, fmt.Errorf("patch: %d init containers removed", -added)
	}
	ops = prependOps(ops, "/spec/initContainers", len(bs.InitContainers), as.InitContainers[:added])
	// The user's init containers get the proxy environment too, at their
	// places after the prepends above.
	for j := range bs.InitContainers {
		if ops, err = envOps(ops, "/spec/initContainers/"+strconv.Itoa(added+j)+"/env", bs.InitContainers[j].Env, as.InitContainers[added+j].Env); err != nil {
			return nil, err
		}
	}
	if len(as.Volumes) < len(bs.Volumes) {
		return nil, fmt.Errorf("patch: %d volumes removed", len(bs.Volumes)-len(as.Volumes))
	}
	ops = appendOps(ops, "/spec/volumes", len(bs.Volumes), as.Volumes[len(bs.Volumes):])
	if len(as.Containers) != len(bs.Containers) {
		return nil, fmt.Errorf("patch: %d containers, were %d", len(as.Containers), len(bs.Containers))
	}
	for i := range as.Containers {
		if ops, err = envOps(ops, "/spec/containers/"+strconv.Itoa(i)+"/env", bs.Containers[i].Env, as.Containers[i].Env); err != nil {
			return nil, err
		}
	}

	// What the ops do not cover must be unchanged: after with those parts
	// put back as they were is before.
	rest := *after
	rest.Annotations, rest.Labels = before.Annotations, before.Labels
	rest.Spec.InitContainers = make([]corev1.Container, len(bs.InitContainers))
	for j, c := range as.InitContainers[added:] {
		c.Env = bs.InitContainers[j].Env
		rest.Spec.InitContainers[j] = c
	}
	rest.Spec.Volumes = as.Volumes[:len(bs.Volumes)]
	rest.Spec.Containers = make([]corev1.Container, len(as.Containers))
	for i, c := range as.Containers {
		c.Env = bs.Containers[i].Env
		rest.Spec.Containers[i] = c
	}
	if !equality.Semantic.DeepEqual(&rest, before) {
		return nil, fmt.Errorf("patch: the mutated pod differs from the pod outside annotations, labels, init containers put first, volumes appended and container env")
	}
	return json.Marshal(ops)
}

// mapOps adds the keys of after that before lacks or has another value
// for. A map the pod does not have (or has empty) is added whole: an add
// under a missing member fails.
func mapOps(ops []patchOp, path string, before, after map[string]string) ([]patchOp, error) {
	for k := range before {
		if _, ok := after[k]; !ok {
			return nil, fmt.Errorf("patch: %s: key %s removed", path, quote(k))
		}
	}
	var changed []string
	for k, v := range after {
		if old, ok := before[k]; !ok || old != v {
			changed = append(changed, k)
		}
	}
	if len(changed) == 0 {
		return ops, nil
	}
	if len(before) == 0 {
		return append(ops, patchOp{"add", path, after}), nil
	}
	slices.Sort(changed) // a patch that does not depend on map order
	for _, k := range changed {
		ops = append(ops, patchOp{"add", path + "/" + escapePointer(k), after[k]})
	}
	return ops, nil
}

// prependOps puts elems before the n elements of the array at path, in
// their order; an empty array (or none) is set whole.
func prependOps[T any](ops []patchOp, path string, n int, elems []T) []patchOp {
	if len(elems) == 0 {
		return ops
	}
	if n == 0 {
		return append(ops, patchOp{"add", path, elems})
	}
	for i := range elems {
		ops = append(ops, patchOp{"add", path + "/" + strconv.Itoa(i), elems[i]})
	}
	return ops
}

// appendOps appends elems to the n elements of the array at path; an empty
// array (or none) is set whole.
func appendOps[T any](ops []patchOp, path string, n int, elems []T) []patchOp {
	if len(elems) == 0 {
		return ops
	}
	if n == 0 {
		return append(ops, patchOp{"add", path, elems})
	}
	for i := range elems {
		ops = append(ops, patchOp{"add", path + "/-", elems[i]})
	}
	return ops
}

// envOps appends after's new entries to a container's env and sets the
// value of an entry whose value changed; an entry may change nothing else.
func envOps(ops []patchOp, path string, before, after []corev1.EnvVar) ([]patchOp, error) {
	if len(after) < len(before) {
		return nil, fmt.Errorf("patch: %s: %d entries removed", path, len(before)-len(after))
	}
	for j := range before {
		b, a := &before[j], &after[j]
		if a.Name != b.Name || !equality.Semantic.DeepEqual(a.ValueFrom, b.ValueFrom) {
			return nil, fmt.Errorf("patch: %s/%d: entry %s changed", path, j, quote(b.Name))
		}
		if a.Value != b.Value {
			ops = append(ops, patchOp{"add", path + "/" + strconv.Itoa(j) + "/value", a.Value})
		}
	}
	return appendOps(ops, path, len(before), after[len(before):]), nil
}

// pointerEscaper escapes a key as an RFC 6901 reference token: "~" first,
// so that the "~" of "~1" is not escaped again.
var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

func escapePointer(key string) string { return pointerEscaper.Replace(key) }

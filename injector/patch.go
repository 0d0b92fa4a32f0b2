package injector

import (
	"encoding/json"
	"fmt"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
)

// Patch is the RFC 6902 JSON patch that turns before into after, the form
// an AdmissionResponse carries. Computing it from the two objects, rather
// than writing operations by hand, keeps the mutation a plain function of
// Go values and the patch exact (escaped keys, array indexes).
func Patch(before, after *corev1.Pod) ([]byte, error) {
	a, err := json.Marshal(before)
	if err != nil {
		return nil, fmt.Errorf("patch: marshal pod: %w", err)
	}
	b, err := json.Marshal(after)
	if err != nil {
		return nil, fmt.Errorf("patch: marshal mutated pod: %w", err)
	}
	ops, err := jsonpatch.CreatePatch(a, b)
	if err != nil {
		return nil, fmt.Errorf("patch: %w", err)
	}
	return json.Marshal(ops)
}

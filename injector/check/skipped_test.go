package check

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSkippedKeysWarn: a policy ConfigMap key that no sidecar reads is a
// warning, which `minimesh check` shows without failing: a README among
// the keys is no fault, a key `geo` holding a policy is one only its
// author can tell. Before, such keys were dropped without a word and
// the policies showed a check mark.
func TestSkippedKeysWarn(t *testing.T) {
	c := cluster(t, "37", 300*24*time.Hour, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: PolicyConfig},
		Data: map[string]string{"geo": "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\nspec: {service: geo}\n"}})
	rs := Run(context.Background(), Options{Client: c, Namespace: "minimesh"})
	i := slices.IndexFunc(rs, func(r Result) bool { return r.Name == "policy ConfigMaps hold no key the sidecars skip" })
	if i < 0 {
		t.Fatalf("no check of the skipped keys in %v", rs)
	}
	if r := rs[i]; !r.Warn || r.Err == nil || r.Err.Error() != "1 keys the sidecars skip, not .yaml, .yml or .json: shop/minimesh-policies/geo" {
		t.Errorf("got %+v; want a warning naming the key", r)
	}
}

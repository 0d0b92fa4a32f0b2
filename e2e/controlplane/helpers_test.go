package controlplane_test

import "k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

func unstructuredSlice(obj map[string]any, fields ...string) ([]any, bool, error) {
	return unstructured.NestedSlice(obj, fields...)
}

package webhook

import (
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
)

// BenchmarkHandler is one admission of an annotated pod, without TLS or
// network: decode, inject, patch, encode. BenchmarkPodCreate50 in
// e2e/injector measures the same through the real API server.
func BenchmarkHandler(b *testing.B) {
	h := newHandler()
	body := review(b, "shop", admissionv1.Create, "Pod", pod(map[string]string{"minimesh.io/inject": "enabled"}))
	b.ReportAllocs()
	for b.Loop() {
		if w := post(h, body); w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}

package webhook

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metadatafake "k8s.io/client-go/metadata/fake"
)

func namespace(name string, labels map[string]string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Labels: labels,
			Annotations: map[string]string{corev1.LastAppliedConfigAnnotation: "{}"},
		},
	}
}

func TestNamespaces(t *testing.T) {
	scheme := metadatafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	client := metadatafake.NewSimpleMetadataClient(scheme,
		namespace("opted", map[string]string{"minimesh.io/inject": "enabled"}),
		namespace("plain", nil))
	n, err := newNamespaces(client)
	if err != nil {
		t.Fatal(err)
	}

	// Before the informer runs every lookup is a GET.
	l, err := n.Labels(context.Background(), "opted")
	if err != nil || l["minimesh.io/inject"] != "enabled" {
		t.Fatalf("GET before sync: %v %v", l, err)
	}
	if _, err := n.Labels(context.Background(), "missing"); err == nil {
		t.Fatal("a missing namespace has labels")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n.Start(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for !n.Synced() {
		if time.Now().After(deadline) {
			t.Fatal("informer did not sync")
		}
		time.Sleep(10 * time.Millisecond)
	}
	obj, err := n.lister.Get("opted")
	if err != nil {
		t.Fatalf("opted not cached: %v", err)
	}
	if m := obj.(*metav1.PartialObjectMetadata); m.Labels["minimesh.io/inject"] != "enabled" || m.Annotations != nil {
		t.Fatalf("cached %+v, want its labels and no annotations", m.ObjectMeta)
	}
	if l, err := n.Labels(ctx, "plain"); err != nil || len(l) != 0 {
		t.Fatalf("plain: %v %v", l, err)
	}
}

package webhook

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

var namespacesGVR = corev1.SchemeGroupVersion.WithResource("namespaces")

// Namespaces knows every namespace's labels from a metadata-only informer:
// one watch, names and labels without specs, so the controller's memory
// stays flat however large the cluster. A namespace created a moment
// before its first pod may not be in the cache yet; then it is read from
// the API server.
type Namespaces struct {
	client   metadata.Interface
	factory  metadatainformer.SharedInformerFactory
	informer cache.SharedIndexInformer
	lister   cache.GenericLister
}

// NewNamespaces builds the informer; Start runs it.
func NewNamespaces(cfg *rest.Config) (*Namespaces, error) {
	client, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("namespaces: %w", err)
	}
	return newNamespaces(client)
}

func newNamespaces(client metadata.Interface) (*Namespaces, error) {
	factory := metadatainformer.NewSharedInformerFactory(client, 0)
	inf := factory.ForResource(namespacesGVR)
	if err := inf.Informer().SetTransform(onlyLabels); err != nil {
		return nil, fmt.Errorf("namespaces: %w", err)
	}
	return &Namespaces{client: client, factory: factory, informer: inf.Informer(), lister: inf.Lister()}, nil
}

// onlyLabels drops what Labels never reads before the object is cached:
// managed fields and annotations (a kubectl-applied namespace carries its
// whole last-applied manifest) are most of a namespace's metadata.
func onlyLabels(obj any) (any, error) {
	if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
		m.ManagedFields = nil
		m.Annotations = nil
	}
	return obj, nil
}

// Start runs the informer until ctx ends.
func (n *Namespaces) Start(ctx context.Context) { n.factory.Start(ctx.Done()) }

// Synced reports whether the first list has arrived.
func (n *Namespaces) Synced() bool { return n.informer.HasSynced() }

// Labels returns namespace name's labels.
func (n *Namespaces) Labels(ctx context.Context, name string) (map[string]string, error) {
	if obj, err := n.lister.Get(name); err == nil {
		if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
			return m.Labels, nil
		}
	}
	m, err := n.client.Resource(namespacesGVR).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get namespace %s: %w", name, err)
	}
	return m.Labels, nil
}

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
	factory := metadatainformer.NewSharedInformerFactory(client, 0)
	inf := factory.ForResource(namespacesGVR)
	return &Namespaces{client: client, factory: factory, informer: inf.Informer(), lister: inf.Lister()}, nil
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

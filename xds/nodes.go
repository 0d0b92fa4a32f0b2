package xds

import (
	"context"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/minimesh/minimesh/xds/xdsclient"
)

// DefaultNamespace is the namespace of a node whose metadata names none,
// as the sidecar's own matching (policy.NewTable) assumes.
const DefaultNamespace = "default"

// namespaceOf is the cache key of a node.
func namespaceOf(n *corev3.Node) string {
	if ns := n.GetMetadata().GetFields()[xdsclient.NamespaceKey].GetStringValue(); ns != "" {
		return ns
	}
	return DefaultNamespace
}

// nodeNamespace groups nodes by their namespace.
type nodeNamespace struct{}

func (nodeNamespace) ID(n *corev3.Node) string { return namespaceOf(n) }

// checkedNamespace is n's namespace, refused unless it can be a
// Kubernetes namespace: the key of a snapshot is not any string a client
// sends.
func checkedNamespace(n *corev3.Node) (string, error) {
	ns := namespaceOf(n)
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return "", status.Errorf(codes.InvalidArgument, "node %q: namespace %q: %s", n.GetId(), ns, strings.Join(errs, "; "))
	}
	return ns, nil
}

// streamKey names a stream: the state-of-the-world and the delta servers
// number their streams each from 1.
type streamKey struct {
	delta bool
	id    int64
}

// open ties a stream to the namespace of its node and makes sure the
// namespace has a snapshot. The server calls it (through the callbacks)
// on the stream's goroutine before it creates the watch of the request,
// so the watch finds the snapshot there. A stream keeps the namespace it
// started with: a node that names another one later is refused.
func (s *Server) open(k streamKey, node *corev3.Node) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if have, isOpen := s.streams[k]; isOpen {
		// A delta stream's later requests need not repeat the node.
		if ns := namespaceOf(node); node != nil && ns != have {
			return status.Errorf(codes.InvalidArgument, "node %q: the stream is in namespace %q, not %q", node.GetId(), have, ns)
		}
		return nil
	}
	ns, err := checkedNamespace(node)
	if err != nil {
		return err
	}
	s.streams[k] = ns
	return s.join(ns)
}

// closed lets go of a stream's namespace. The server calls it after it
// cancelled the stream's watches.
func (s *Server) closed(k streamKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ns, ok := s.streams[k]; ok {
		delete(s.streams, k)
		s.leave(ns)
	}
}

// streamCallbacks tie streams to namespaces, then call the caller's
// callbacks.
type streamCallbacks struct {
	serverv3.Callbacks
	s *Server
}

func (c streamCallbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	if err := c.s.open(streamKey{id: id}, req.GetNode()); err != nil {
		return err
	}
	return c.Callbacks.OnStreamRequest(id, req)
}

func (c streamCallbacks) OnStreamClosed(id int64, node *corev3.Node) {
	c.s.closed(streamKey{id: id})
	c.Callbacks.OnStreamClosed(id, node)
}

func (c streamCallbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	if err := c.s.open(streamKey{delta: true, id: id}, req.GetNode()); err != nil {
		return err
	}
	return c.Callbacks.OnStreamDeltaRequest(id, req)
}

func (c streamCallbacks) OnDeltaStreamClosed(id int64, node *corev3.Node) {
	c.s.closed(streamKey{delta: true, id: id})
	c.Callbacks.OnDeltaStreamClosed(id, node)
}

// fetcher answers a one-off (unary) fetch from the namespace's snapshot,
// made for the fetch if no stream of the namespace is open.
type fetcher struct {
	cachev3.SnapshotCache
	s *Server
}

func (f fetcher) Fetch(ctx context.Context, req *cachev3.Request) (cachev3.Response, error) {
	ns, err := checkedNamespace(req.GetNode())
	if err != nil {
		return nil, err
	}
	f.s.mu.Lock()
	err = f.s.join(ns)
	f.s.mu.Unlock()
	defer func() {
		f.s.mu.Lock()
		f.s.leave(ns)
		f.s.mu.Unlock()
	}()
	if err != nil {
		return nil, err
	}
	return f.SnapshotCache.Fetch(ctx, req)
}

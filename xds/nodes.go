package xds

import (
	"context"
	"net"
	"net/netip"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/minimesh/minimesh/internal/echo"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// What one client can make the server hold is bounded by these, each
// refused with an error that ends the stream (the client reconnects, a
// minimesh sidecar with backoff, keeping its last good set):
const (
	// MaxRequestBytes bounds one discovery request, its node included
	// (an Envoy's node, with its list of extensions, is tens of KB; a
	// sidecar's, under 200 bytes). The server keeps the last request of
	// each type of a stream, node and all, for as long as the stream
	// lasts.
	MaxRequestBytes = 256 << 10
	// MaxDeltaNames bounds the resource names one incremental stream
	// subscribes to in one type: subscriptions add up over requests.
	MaxDeltaNames = 20000
	// DefaultMaxStreamsPerPeer bounds the streams open from one IP
	// address other than loopback (Server.MaxStreamsPerPeer): a sidecar
	// holds one, an Envoy one per xDS type at most, a restarting pod two
	// for a moment. One address can be a whole node's pods where the
	// network masquerades pod traffic (or for hostNetwork pods), so the
	// bound is above the most pods a node runs (the kubelet's maxPods:
	// 110 by default, 250 the largest Kubernetes supports), each with a
	// stream and a restart's second. Each stream costs a few goroutines
	// and, for a client that stops reading, one response in memory.
	DefaultMaxStreamsPerPeer = 512
)

// checkRequest refuses a request of a type that is not an xDS resource
// type: the server keeps a watch per type a stream names, and would keep
// one for every string a client sends. "" is the stream's own type (a
// non-ADS stream); ADS refuses it itself.
func checkRequest(typeURL string, size int) error {
	if typeURL != "" && cachev3.GetResponseType(typeURL) == types.UnknownType {
		return status.Errorf(codes.InvalidArgument, "type %s: not an xDS resource type", echo.Quote(typeURL))
	}
	if size > MaxRequestBytes {
		return status.Errorf(codes.InvalidArgument, "a request of %d bytes: at most %d", size, MaxRequestBytes)
	}
	return nil
}

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
		return "", status.Errorf(codes.InvalidArgument, "node %s: namespace %s: %s", echo.Quote(n.GetId()), echo.Quote(ns), strings.Join(errs, "; "))
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
			return status.Errorf(codes.InvalidArgument, "node %s: the stream is in namespace %q, not %s", echo.Quote(node.GetId()), have, echo.Quote(ns))
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

// closed lets go of a stream's namespace and its place among its peer's
// streams. The server calls it after it cancelled the stream's watches
// (and for a stream refused at its opening).
func (s *Server) closed(k streamKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ns, ok := s.streams[k]; ok {
		delete(s.streams, k)
		s.leave(ns)
	}
	if p, ok := s.peerOf[k]; ok {
		delete(s.peerOf, k)
		if s.perPeer[p]--; s.perPeer[p] <= 0 {
			delete(s.perPeer, p)
		}
	}
	delete(s.deltaNames, k)
}

// opened counts a new stream against its peer's address, refusing it
// past MaxStreamsPerPeer.
func (s *Server) opened(ctx context.Context, k streamKey) error {
	addr := "unknown"
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
		if host, _, err := net.SplitHostPort(addr); err == nil {
			addr = host
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ip, err := netip.ParseAddr(addr); err == nil && ip.IsLoopback() && !s.capLoopback {
		// The controller's own pod (and a test's or benchmark's machine,
		// whose thousand sidecars all come from 127.0.0.1).
		return nil
	}
	limit := s.MaxStreamsPerPeer
	if limit <= 0 {
		limit = DefaultMaxStreamsPerPeer
	}
	if s.perPeer[addr] >= limit {
		return status.Errorf(codes.ResourceExhausted, "%d xDS streams open from %s already: at most %d", s.perPeer[addr], addr, limit)
	}
	s.perPeer[addr]++
	s.peerOf[k] = addr
	return nil
}

// subscribed applies a delta request's subscriptions to the names its
// stream follows in its type, refusing more than MaxDeltaNames.
func (s *Server) subscribed(k streamKey, req *discovery.DeltaDiscoveryRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	byType := s.deltaNames[k]
	if byType == nil {
		byType = map[string]map[string]struct{}{}
		s.deltaNames[k] = byType
	}
	names := byType[req.GetTypeUrl()]
	if names == nil {
		names = map[string]struct{}{}
		byType[req.GetTypeUrl()] = names
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		delete(names, n)
	}
	for _, n := range req.GetResourceNamesSubscribe() {
		names[n] = struct{}{}
	}
	for n := range req.GetInitialResourceVersions() {
		names[n] = struct{}{}
	}
	if len(names) > MaxDeltaNames {
		return status.Errorf(codes.InvalidArgument, "type %s: more than %d resource names subscribed on one stream", echo.Quote(req.GetTypeUrl()), MaxDeltaNames)
	}
	return nil
}

// streamCallbacks tie streams to namespaces, then call the caller's
// callbacks.
type streamCallbacks struct {
	serverv3.Callbacks
	s *Server
}

func (c streamCallbacks) OnStreamOpen(ctx context.Context, id int64, typeURL string) error {
	if err := c.s.opened(ctx, streamKey{id: id}); err != nil {
		return err
	}
	return c.Callbacks.OnStreamOpen(ctx, id, typeURL)
}

func (c streamCallbacks) OnDeltaStreamOpen(ctx context.Context, id int64, typeURL string) error {
	if err := c.s.opened(ctx, streamKey{delta: true, id: id}); err != nil {
		return err
	}
	return c.Callbacks.OnDeltaStreamOpen(ctx, id, typeURL)
}

func (c streamCallbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	if err := checkRequest(req.GetTypeUrl(), proto.Size(req)); err != nil {
		return err
	}
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
	if err := checkRequest(req.GetTypeUrl(), proto.Size(req)); err != nil {
		return err
	}
	if err := c.s.open(streamKey{delta: true, id: id}, req.GetNode()); err != nil {
		return err
	}
	if err := c.s.subscribed(streamKey{delta: true, id: id}, req); err != nil {
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

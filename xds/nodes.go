package xds

import (
	"context"
	"net"
	"net/netip"
	"slices"
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
	"google.golang.org/protobuf/types/known/structpb"
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
	// MaxResourceNameBytes bounds a resource name a stream subscribes
	// to. The longest name this server serves is 306 bytes, a policy's
	// cluster for a qualified Service spelling with a port
	// (outbound|65535|<63>.<63>.svc.cluster.local|<63>.<63>.svc.cluster.local;
	// an external host's is at most 269, an EDS name,
	// <service>.<namespace>.svc.cluster.local:<port>, 151): a longer
	// name is never answered, and each was a client's 256 KiB held.
	MaxResourceNameBytes = 512
	// MaxSubscribedNameBytes bounds the names one stream subscribes
	// to (incremental or not), all types together, each counted with
	// subscribedNameCost bytes more for its entries in the server's
	// maps (its own and go-control-plane's): MaxDeltaNames counts
	// names, and 20,000 names of 250 KB were 5 GB per stream.
	MaxSubscribedNameBytes = 4 << 20
	// DefaultMaxStreamsPerPeer bounds the streams open from one IP
	// address other than loopback (Server.MaxStreamsPerPeer): a sidecar
	// holds one, an Envoy one per xDS type at most, a restarting pod two
	// for a moment. One address can be a whole node's pods where the
	// network masquerades pod traffic (or for hostNetwork pods), so the
	// bound is above the most pods a node runs (the kubelet's maxPods:
	// 110 by default, 250 the largest Kubernetes supports), each with a
	// stream and a restart's second. Each stream costs a few goroutines
	// and, for a client that stops reading, twice a response in memory
	// until the send timeout closes it (DefaultSendTimeout).
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

// subscribedNameCost is what a subscribed name costs the server besides
// its bytes: an entry in the stream's map of names and one in
// go-control-plane's, and its allocation (measured: 70 to 130 bytes, by
// the name's length and how far the maps grew; at MaxSubscribedNameBytes
// a stream's names held at most 4.7 MB of heap).
const subscribedNameCost = 112

// namespaceOf is the cache key of a node (checkedNamespace says whether
// it is one).
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
	// A number or a list is no namespace, and read as a string it is ""
	// (default): the node would be served another namespace's policies.
	if v, ok := n.GetMetadata().GetFields()[xdsclient.NamespaceKey]; ok {
		if _, isString := v.GetKind().(*structpb.Value_StringValue); !isString {
			return "", status.Errorf(codes.InvalidArgument, "node %s: metadata %s is %s, not a string", echo.Quote(n.GetId()), xdsclient.NamespaceKey, kindOf(v))
		}
	}
	ns := namespaceOf(n)
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return "", status.Errorf(codes.InvalidArgument, "node %s: namespace %s: %s", echo.Quote(n.GetId()), echo.Quote(ns), strings.Join(errs, "; "))
	}
	return ns, nil
}

// kindOf names the kind of a metadata value, for an error.
func kindOf(v *structpb.Value) string {
	switch v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		return "a number"
	case *structpb.Value_BoolValue:
		return "a bool"
	case *structpb.Value_ListValue:
		return "a list"
	case *structpb.Value_StructValue:
		return "a struct"
	case *structpb.Value_NullValue:
		return "null"
	}
	return "empty"
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
		if node == nil {
			return nil
		}
		ns, err := checkedNamespace(node)
		if err != nil {
			return err
		}
		if ns != have {
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
// (and for a stream refused at its opening: opened is false).
func (s *Server) closed(k streamKey) (opened bool) {
	s.sentMu.Lock()
	delete(s.sent, k)
	s.sentMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	_, refused := s.refused[k]
	delete(s.refused, k)
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
	delete(s.subs, k)
	return !refused
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

// subscriptions are the resource names a stream follows: a delta
// stream's by type (they add up over requests), a state-of-the-world
// stream's as what they cost by type (each request names all of its
// type's), and what they cost in all (MaxSubscribedNameBytes).
type subscriptions struct {
	delta map[string]map[string]struct{}
	sotw  map[string]int
	bytes int
}

// nameCost is what a subscribed name costs the server.
func nameCost(n string) int { return len(n) + subscribedNameCost }

// checkName refuses a name no resource served has: longer than
// MaxResourceNameBytes.
func checkName(typeURL, n string) error {
	if len(n) > MaxResourceNameBytes {
		return status.Errorf(codes.InvalidArgument, "type %s: a resource name of %d bytes: at most %d (no resource served has a longer one)", echo.Quote(typeURL), len(n), MaxResourceNameBytes)
	}
	return nil
}

// subscriptionsOf is stream k's subscriptions. The caller holds mu.
func (s *Server) subscriptionsOf(k streamKey) *subscriptions {
	subs := s.subs[k]
	if subs == nil {
		subs = &subscriptions{delta: map[string]map[string]struct{}{}, sotw: map[string]int{}}
		s.subs[k] = subs
	}
	return subs
}

// tooMany refuses subs past MaxSubscribedNameBytes.
func (subs *subscriptions) tooMany(typeURL string) error {
	if subs.bytes > MaxSubscribedNameBytes {
		return status.Errorf(codes.InvalidArgument, "type %s: the resource names subscribed on one stream come to %d bytes (%d bytes a name besides its own): at most %d", echo.Quote(typeURL), subs.bytes, subscribedNameCost, MaxSubscribedNameBytes)
	}
	return nil
}

// subscribed applies a delta request's subscriptions to the names its
// stream follows in its type, refusing a name longer than
// MaxResourceNameBytes, more than MaxDeltaNames in a type and more than
// MaxSubscribedNameBytes in all. The stream ends with the error, and
// what a refused request added goes with it (closed).
func (s *Server) subscribed(k streamKey, req *discovery.DeltaDiscoveryRequest) error {
	typeURL := req.GetTypeUrl()
	// Checked before anything is kept.
	for _, n := range req.GetResourceNamesSubscribe() {
		if err := checkName(typeURL, n); err != nil {
			return err
		}
	}
	for n := range req.GetInitialResourceVersions() {
		if err := checkName(typeURL, n); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	subs := s.subscriptionsOf(k)
	names := subs.delta[typeURL]
	if names == nil {
		names = map[string]struct{}{}
		subs.delta[typeURL] = names
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		if _, ok := names[n]; ok {
			delete(names, n)
			subs.bytes -= nameCost(n)
		}
	}
	add := func(n string) {
		if _, ok := names[n]; !ok {
			names[n] = struct{}{}
			subs.bytes += nameCost(n)
		}
	}
	for _, n := range req.GetResourceNamesSubscribe() {
		add(n)
	}
	for n := range req.GetInitialResourceVersions() {
		add(n)
	}
	if len(names) > MaxDeltaNames {
		return status.Errorf(codes.InvalidArgument, "type %s: more than %d resource names subscribed on one stream", echo.Quote(typeURL), MaxDeltaNames)
	}
	return subs.tooMany(typeURL)
}

// subscribedSotW is subscribed for a state-of-the-world request, whose
// names replace its type's: the server keeps them as a map (about 50
// bytes a name), so a request's 256 KiB of short names held 2.4 MB, and
// a stream of the 10 xDS types 24 MB.
func (s *Server) subscribedSotW(k streamKey, req *discovery.DiscoveryRequest) error {
	typeURL := req.GetTypeUrl()
	cost := 0
	for _, n := range req.GetResourceNames() {
		if err := checkName(typeURL, n); err != nil {
			return err
		}
		cost += nameCost(n)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	subs := s.subscriptionsOf(k)
	subs.bytes += cost - subs.sotw[typeURL]
	subs.sotw[typeURL] = cost
	return subs.tooMany(typeURL)
}

// streamCallbacks tie streams to namespaces, then call the caller's
// callbacks.
type streamCallbacks struct {
	serverv3.Callbacks
	s *Server
}

func (c streamCallbacks) OnStreamOpen(ctx context.Context, id int64, typeURL string) error {
	k := streamKey{id: id}
	if err := c.s.opened(ctx, k); err != nil {
		c.s.refuse(k)
		return err
	}
	return c.Callbacks.OnStreamOpen(ctx, id, typeURL)
}

func (c streamCallbacks) OnDeltaStreamOpen(ctx context.Context, id int64, typeURL string) error {
	k := streamKey{delta: true, id: id}
	if err := c.s.opened(ctx, k); err != nil {
		c.s.refuse(k)
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
	if err := c.s.subscribedSotW(streamKey{id: id}, req); err != nil {
		return err
	}
	// The caller's callbacks see the request as the client sent it.
	if err := c.Callbacks.OnStreamRequest(id, req); err != nil {
		return err
	}
	c.s.holdNack(streamKey{id: id}, req)
	return nil
}

func (c streamCallbacks) OnStreamResponse(ctx context.Context, id int64, req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	c.s.sentOn(streamKey{id: id}, req, resp)
	c.Callbacks.OnStreamResponse(ctx, id, req, resp)
}

func (c streamCallbacks) OnStreamClosed(id int64, node *corev3.Node) {
	if c.s.closed(streamKey{id: id}) {
		c.Callbacks.OnStreamClosed(id, node)
	}
}

// A delta stream needs no holdNack: the cache answers a delta request
// only with what differs from what the stream was last sent, which a
// NACK does not change.
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
	if c.s.closed(streamKey{delta: true, id: id}) {
		c.Callbacks.OnDeltaStreamClosed(id, node)
	}
}

// refuse marks a stream refused at its opening: go-control-plane still
// calls its close, which the caller's callbacks, never told it opened,
// must not hear (a gauge of open streams would count it down).
func (s *Server) refuse(k streamKey) {
	s.mu.Lock()
	s.refused[k] = struct{}{}
	s.mu.Unlock()
}

// sentResponse is the last response of a type on a stream, and the
// resource names of the request it answered.
type sentResponse struct {
	nonce, version string
	names          []string
}

// sentOn records resp, the answer to req, as the last response of its
// type on stream k.
func (s *Server) sentOn(k streamKey, req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	s.sentMu.Lock()
	defer s.sentMu.Unlock()
	byType := s.sent[k]
	if byType == nil {
		byType = map[string]sentResponse{}
		s.sent[k] = byType
	}
	// The request's own slice, not a copy: nothing changes a request
	// once received, and the server's watch holds it anyway.
	byType[resp.GetTypeUrl()] = sentResponse{nonce: resp.GetNonce(), version: resp.GetVersionInfo(), names: req.GetResourceNames()}
}

// holdNack makes a request that answers the last response of its type
// (its nonce), ACK or NACK, and names the resources the request that
// response answered did, wait for the next version rather than be
// answered with the same one again. The cache answers at once any
// version other than its snapshot's, and the version a client sends
// need not be the one it was sent: a NACK's is the last version the
// client accepted, and a client may ACK with none at all. A client that
// NACKs as soon as it is answered (as an Envoy does) was resent the
// version it refused, and NACKed it, thousands of times a second, a
// controller core and its log busy for as long as the stream lasted;
// one that ACKed without a version was resent the whole set 8,000 times
// a second. Given the version sent instead, the cache waits until the
// snapshot moves on from it (or the request names resources not yet
// sent), as it waits on an ACK of it. A request that names other
// resources is a new subscription, answered as the cache decides; one
// that answers an older response is left alone: the server ignores a
// stale nonce.
func (s *Server) holdNack(k streamKey, req *discovery.DiscoveryRequest) {
	if req.GetResponseNonce() == "" {
		return // a stream's first request of its type: nothing sent yet
	}
	s.sentMu.Lock()
	last, ok := s.sent[k][req.GetTypeUrl()]
	s.sentMu.Unlock()
	if ok && req.GetResponseNonce() == last.nonce && slices.Equal(req.GetResourceNames(), last.names) {
		req.VersionInfo = last.version
	}
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

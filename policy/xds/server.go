// Package xds serves policies to sidecars over ADS and receives them in the
// sidecar. The server is go-control-plane's, fed one snapshot per
// namespace: a sidecar, identified by the namespace in its node metadata,
// sees the policies of its namespace and the cluster-wide ones. The
// resources are the Envoy ones of policy/envoy, so an Envoy could be
// pointed at the same server.
package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/policy/envoy"
	"github.com/minimesh/minimesh/policy/xdsclient"
)

// nodeNamespace groups nodes by their namespace.
type nodeNamespace struct{}

func (nodeNamespace) ID(n *corev3.Node) string {
	if n == nil {
		return ""
	}
	if v, ok := n.GetMetadata().GetFields()[xdsclient.NamespaceKey]; ok {
		return v.GetStringValue()
	}
	return ""
}

// Server holds the snapshots.
type Server struct {
	Cache cachev3.SnapshotCache
	xds   serverv3.Server

	mu       sync.Mutex
	global   []*policy.ResiliencePolicy            // cluster-wide
	byNS     map[string][]*policy.ResiliencePolicy // per namespace
	versions map[string]string
}

// NewServer makes a server whose streams end with ctx.
func NewServer(ctx context.Context, cb serverv3.Callbacks) *Server {
	c := cachev3.NewSnapshotCache(true, nodeNamespace{}, nil)
	return &Server{Cache: c, xds: serverv3.NewServer(ctx, c, cb), byNS: map[string][]*policy.ResiliencePolicy{}, versions: map[string]string{}}
}

// Register adds ADS (and CDS, RDS for Envoys without ADS) to g.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, s.xds)
	routeservice.RegisterRouteDiscoveryServiceServer(g, s.xds)
}

// SetGlobal replaces the cluster-wide policies (every namespace sees them
// unless it has its own policy for the same service) and republishes.
func (s *Server) SetGlobal(pols []*policy.ResiliencePolicy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.global = pols
	var errs []error
	for ns := range s.byNS {
		if err := s.publish(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.publish(""); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// SetNamespace replaces the policies of namespace ns and republishes its
// snapshot; a namespace without policies still gets the global ones.
func (s *Server) SetNamespace(ns string, pols []*policy.ResiliencePolicy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byNS[ns] = pols
	return s.publish(ns)
}

// Version is the version of namespace ns's snapshot ("" before any).
func (s *Server) Version(ns string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.versions[ns]
}

func (s *Server) publish(ns string) error {
	pols := merge(s.global, s.byNS[ns])
	clusters, routes, version, err := Resources(pols, ns)
	if err != nil {
		return fmt.Errorf("namespace %s: %w", ns, err)
	}
	if s.versions[ns] == version {
		return nil
	}
	snap, err := cachev3.NewSnapshot(version, map[resource.Type][]types.Resource{
		resource.ClusterType: clusters,
		resource.RouteType:   routes,
	})
	if err != nil {
		return err
	}
	if err := s.Cache.SetSnapshot(context.Background(), ns, snap); err != nil {
		return err
	}
	s.versions[ns] = version
	return nil
}

// merge is the namespace's policies over the global ones: a namespace's
// policy for a service wins.
func merge(global, local []*policy.ResiliencePolicy) []*policy.ResiliencePolicy {
	own := map[string]bool{}
	for _, p := range local {
		own[p.Spec.Service] = true
	}
	out := append([]*policy.ResiliencePolicy(nil), local...)
	for _, p := range global {
		if !own[p.Spec.Service] {
			out = append(out, p)
		}
	}
	return out
}

// Resources are the clusters and routes of pols for namespace ns, and a
// version that changes exactly when they do (a hash of their encoding).
func Resources(pols []*policy.ResiliencePolicy, ns string) (clusters, routes []types.Resource, version string, err error) {
	res, err := envoy.Translate(pols, ns)
	if err != nil {
		return nil, nil, "", err
	}
	h := sha256.New()
	add := func(m proto.Message) error {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		h.Write(b)
		return err
	}
	for _, c := range res.Clusters {
		clusters = append(clusters, c)
		if err := add(c); err != nil {
			return nil, nil, "", err
		}
	}
	for _, p := range pols {
		if p.Spec.Service != policy.DefaultService {
			continue
		}
		c, err := envoy.DefaultsCluster(p)
		if err != nil {
			return nil, nil, "", err
		}
		clusters = append(clusters, c)
		if err := add(c); err != nil {
			return nil, nil, "", err
		}
	}
	routes = []types.Resource{res.Routes}
	if err := add(res.Routes); err != nil {
		return nil, nil, "", err
	}
	return clusters, routes, hex.EncodeToString(h.Sum(nil))[:16], nil
}

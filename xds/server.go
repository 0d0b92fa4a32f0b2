// Package xds is the control plane's ADS server (its client, in the sidecar,
// is xds/xdsclient): what sidecars need from the cluster, policies (CDS,
// RDS) and every Service's endpoints (EDS). The server is
// go-control-plane's snapshot cache keyed by the namespace in a node's
// metadata: a sidecar sees the policies of its namespace over the
// cluster-wide ones, and the endpoints of every Service (the same in
// every namespace; docs/controlplane.md says why and what it costs). The
// resources are Envoy's (policy/envoy; ClusterLoadAssignments named
// <service>.<namespace>.svc.cluster.local:<port>), so an Envoy could be
// pointed at the same server.
//
// A snapshot cache answers a watch only from a snapshot set for the
// watch's key, and a watch on a key that nobody sets waits forever. So the
// keys are not the namespaces that policies name but the namespaces that
// sidecars are in: a stream's first request makes the snapshot of its
// namespace from what is known at that moment, before the server creates
// the request's watch, and the last stream of a namespace going away drops
// it. Every namespace with a sidecar has a snapshot, whether a policy names
// it or not; the server holds snapshots only for namespaces with a sidecar
// connected, and namespaces with the same content (all those without
// policies of their own) share one.
package xds

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/policy/envoy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// Server holds the policies and the snapshots of the namespaces that have
// sidecars connected.
type Server struct {
	Cache cachev3.SnapshotCache
	// MaxStreamsPerPeer bounds the streams open from one IP address
	// (0: DefaultMaxStreamsPerPeer); set it before serving. Loopback is
	// not bounded.
	MaxStreamsPerPeer int
	// SendTimeout is how long a response may go untaken while its
	// connection writes nothing (SendTimeouts; 0: DefaultSendTimeout);
	// set it before serving.
	SendTimeout time.Duration
	capLoopback bool // tests: bound loopback too
	xds         serverv3.Server

	mu sync.Mutex
	// set: policies were given. Until then streams wait without an
	// answer, so that a controller that has not read the cluster yet does
	// not tell every reconnecting sidecar to drop its policies.
	set    bool
	global []*policy.ResiliencePolicy // cluster-wide, as served (boundPolicies)
	// wantEndpoints: a server for a cluster (ExpectEndpoints) publishes
	// nothing until the endpoints are set too, for the same reason.
	wantEndpoints, endpointsSet bool
	endpoints                   endpointContent                       // every Service's, the same in every namespace
	byNS                        map[string][]*policy.ResiliencePolicy // namespaces with policies of their own, as served
	// givenGlobal and givenByNS are the policies as given; global and
	// byNS, what of them fits in a sidecar's CDS response
	// (MaxClusterBytes), and leftOut the others.
	givenGlobal     []*policy.ResiliencePolicy
	givenByNS       map[string][]*policy.ResiliencePolicy
	leftOut         []PolicyLeftOut
	maxClusterBytes int                   // 0: MaxClusterBytes; tests lower it
	report          func([]PolicyLeftOut) // ReportPolicies'; nil for none
	// contents are the policies translated, by contentKey, kept from one
	// publish to the next: they change only with the policies (bound
	// makes them anew), so a change of endpoints, which a rollout makes
	// every 100 ms, rebuilds EDS and the snapshots, not every
	// namespace's clusters (a short cluster-wide name with 1,000
	// namespaces was 95 ms and 30 MB under mu per change). Only
	// connected namespaces keep theirs (leave, prune).
	contents map[string]*content
	// groups are the namespaces with a stream open (or a fetch under
	// way): exactly those have a snapshot in the cache.
	groups  map[string]*group
	streams map[streamKey]string // open stream → its namespace
	shared  map[string]*shared   // snapshots by version
	// What each peer holds: streams by address, and the names each
	// stream subscribed to, by type.
	perPeer map[string]int
	peerOf  map[streamKey]string
	subs    map[streamKey]*subscriptions
	// refused: streams whose opening was refused, which the caller's
	// callbacks never saw open and must not see close.
	refused map[streamKey]struct{}

	// sent is the last response of each type on each state-of-the-world
	// stream (holdNack). Its own lock: it is written as each response is
	// sent, on the stream's goroutine, which must never wait for mu
	// (held while a snapshot is set and answers the watches).
	sentMu sync.Mutex
	sent   map[streamKey]map[string]sentResponse
}

type group struct {
	users   int
	version string // of its snapshot; "" before the first
}

// shared is one snapshot and how many namespaces serve it: namespaces
// with the same content hold one copy of the resources between them.
type shared struct {
	snap   *cachev3.Snapshot
	groups int
}

// NewServer makes a server whose streams end with ctx; cb (may be nil)
// observes the streams.
func NewServer(ctx context.Context, cb serverv3.Callbacks) *Server {
	s := &Server{
		Cache:   cachev3.NewSnapshotCache(true, nodeNamespace{}, nil),
		byNS:    map[string][]*policy.ResiliencePolicy{},
		groups:  map[string]*group{},
		streams: map[streamKey]string{},
		shared:  map[string]*shared{},

		perPeer: map[string]int{},
		peerOf:  map[streamKey]string{},
		subs:    map[streamKey]*subscriptions{},
		refused: map[streamKey]struct{}{},
		sent:    map[streamKey]map[string]sentResponse{},
	}
	// No endpoints until told: answered as none (a version of its own).
	s.endpoints, _, _ = endpointResources(nil, nil)
	if cb == nil {
		cb = serverv3.CallbackFuncs{}
	}
	s.xds = serverv3.NewServer(ctx, fetcher{s.Cache, s}, streamCallbacks{cb, s})
	return s
}

// ExpectEndpoints makes the server wait for SetEndpoints as well as for
// the policies before it answers anyone: a controller that watches a
// cluster calls it before serving, so that a sidecar reconnecting to a
// restarted controller is never told "no endpoints" (and drops the ones
// it has) because the Services were not read yet. Without it (policies
// from files, no cluster) the endpoints are empty and never expected.
func (s *Server) ExpectEndpoints() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wantEndpoints = true
}

// SetEndpoints replaces every Service port's endpoints, keyed by
// xdsclient.EndpointName, and pushes them to every connected sidecar
// whose namespace's snapshot changes (all of them, unless nothing did).
// What every sidecar takes is served (bound): a Service over its own
// bound, and past the cluster's (xdsclient.MaxEndpoints,
// MaxEndpointBytes) the largest Services of the namespaces that hold the
// most, have their endpoints left out (their ClusterIPs are still sent,
// so that they keep their name: LeftOut), and served says which. A set
// is never refused for its size: refused, it kept the last one for every
// Service of the cluster (docs/controlplane.md, "Endpoints (EDS)").
func (s *Server) SetEndpoints(eps map[string][]xdsclient.Endpoint) (served EndpointsServed, err error) {
	return s.SetServices(eps, nil)
}

// SetServices is SetEndpoints with the Services' own addresses:
// clusterIPs, keyed by resource name as eps is, are each Service port's
// ClusterIP:port (every family of spec.clusterIPs; none for a headless or
// ExternalName Service), sent in its ClusterLoadAssignment
// (LoadAssignment) and counted in its size for the bound. A name
// missing from eps is not sent.
func (s *Server) SetServices(eps map[string][]xdsclient.Endpoint, clusterIPs map[string][]netip.AddrPort) (served EndpointsServed, err error) {
	c, served, err := endpointResources(eps, clusterIPs)
	if err != nil {
		return served, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endpointsSet = true
	s.endpoints = c
	return served, s.publishAll()
}

// Register adds ADS (and CDS, EDS, RDS for Envoys without ADS) to g.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, s.xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, s.xds)
	routeservice.RegisterRouteDiscoveryServiceServer(g, s.xds)
}

// Set replaces every policy: global applies cluster-wide, byNS[ns] in
// namespace ns over the global ones (a namespace's policy for a service
// wins). A namespace missing from byNS, or with no policies in it, has
// the global ones only. Every connected sidecar whose content changed
// gets it, all from this one consistent state.
//
// Each list is in order of precedence, the oldest first: what would make
// a namespace's CDS response larger than a sidecar takes is left out,
// the last of a list first (MaxClusterBytes, PoliciesLeftOut), rather
// than sent to be refused whole.
func (s *Server) Set(global []*policy.ResiliencePolicy, byNS map[string][]*policy.ResiliencePolicy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.set = true
	s.givenGlobal = global
	s.givenByNS = map[string][]*policy.ResiliencePolicy{}
	for ns, pols := range byNS {
		if len(pols) > 0 {
			s.givenByNS[ns] = pols
		}
	}
	s.bound()
	return errors.Join(s.checkNames(), s.publishAll())
}

// bound makes what is served from what was given (boundPolicies) and
// reports what it left out; the contents it made replace every one kept
// (contents), which were made from the policies before. The caller holds
// mu.
func (s *Server) bound() {
	s.global, s.byNS, s.contents, s.leftOut = s.boundPolicies(s.givenGlobal, s.givenByNS)
	if s.report != nil {
		s.report(s.leftOut)
	}
}

// checkNames reports the policies that would share a cluster name, in
// the cluster-wide set and in each namespace's, whether or not a sidecar
// is connected to be refused them: publish fails only for the namespaces
// it makes a snapshot for, and a caller that sets policies must hear of
// such a pair when it sets them. The caller holds mu.
func (s *Server) checkNames() error {
	var errs []error
	if err := envoy.CheckNamesFor(s.givenGlobal, DefaultNamespace); err != nil {
		errs = append(errs, fmt.Errorf("cluster-wide policies: %w", err))
	}
	for _, ns := range slices.Sorted(maps.Keys(s.givenByNS)) {
		if err := envoy.CheckNamesFor(Merge(s.givenGlobal, s.givenByNS[ns]), ns); err != nil {
			errs = append(errs, fmt.Errorf("namespace %s: %w", ns, err))
		}
	}
	return errors.Join(errs...)
}

// SetNamespace replaces the policies of namespace ns only (none: it
// falls back to the global ones), for tests and callers that keep no
// whole state; a controller uses Set.
func (s *Server) SetNamespace(ns string, pols []*policy.ResiliencePolicy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.set = true
	if s.givenByNS == nil {
		s.givenByNS = map[string][]*policy.ResiliencePolicy{}
	}
	if len(pols) > 0 {
		s.givenByNS[ns] = pols
	} else {
		delete(s.givenByNS, ns)
	}
	s.bound()
	return errors.Join(s.checkNames(), s.publishAll())
}

// Version is the version of namespace ns's snapshot: "" while no
// sidecar of ns is connected, or before any policies were set.
func (s *Server) Version(ns string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.groups[ns]; g != nil {
		return g.version
	}
	return ""
}

// publishAll brings every connected namespace's snapshot up to date,
// then lets go of the contents of namespaces no sidecar is in (bound
// makes one for every namespace with policies). The caller holds mu.
func (s *Server) publishAll() error {
	var errs []error
	for ns := range s.groups {
		errs = append(errs, s.publish(ns))
	}
	for key := range s.contents {
		if ns, ok := strings.CutPrefix(key, "ns:"); ok && s.groups[ns] == nil {
			delete(s.contents, key)
		}
	}
	return errors.Join(errs...)
}

// content is the resources of a namespace and their version.
type content struct {
	clusters, routes []types.Resource
	version          string
	err              error
	sizes            // the clusters' in the CDS response
	// given is what every policy given would have cost, when fitNamespace
	// left some out (for the report).
	given sizes
}

// sizes are the clusters' bytes in a CDS response (clusterBytes), in
// all and by the service of each one's policy.
type sizes struct {
	bytes int
	cost  map[string]int
}

// contentKey names what namespace ns's resources are made from, for
// memo: the namespaces without policies of their own share the content
// of the cluster-wide policies unless one of those reads differently in
// ns (resolvesIn), and one change then costs one translation for them
// all, not one per namespace.
func (s *Server) contentKey(ns string) string {
	if len(s.byNS[ns]) > 0 {
		return "ns:" + ns
	}
	for _, p := range s.global {
		if resolvesIn(p, ns) {
			return "ns:" + ns
		}
	}
	return "cluster-wide"
}

// resolvesIn reports whether p's resources, as a node of ns is served
// them (envoy.TranslateFor), differ from those of a namespace p does not
// name: a short Service name (reviews) is a Service of every namespace,
// reviews.<ns> in ns, as the sidecar reads it (docs/policy.md,
// "Matching"); a qualified one (reviews.shop) also claims the bare name
// reviews from a node of shop. An external host and "*" read the same
// everywhere.
func resolvesIn(p *policy.ResiliencePolicy, ns string) bool {
	if p.Spec.Service == policy.DefaultService {
		return false
	}
	host, _, _ := strings.Cut(p.Spec.Service, ":")
	fqdn, isSvc := policy.ServiceFQDN(strings.ToLower(host), ns)
	if !isSvc {
		return false
	}
	if !strings.Contains(host, ".") {
		return true
	}
	_, rest, _ := strings.Cut(fqdn, ".")
	return strings.HasPrefix(rest, ns+".")
}

// publish brings namespace ns's snapshot up to date, if a sidecar of ns
// is connected and policies were set: the one way a snapshot is made.
// Its content is translated only if contents has none for it. The
// caller holds mu.
func (s *Server) publish(ns string) error {
	g := s.groups[ns]
	if g == nil || !s.set || s.wantEndpoints && !s.endpointsSet {
		return nil
	}
	key := s.contentKey(ns)
	c := s.contents[key]
	if c == nil {
		c = resources(Merge(s.global, s.byNS[ns]), ns)
		if max := cmp.Or(s.maxClusterBytes, MaxClusterBytes); c.err == nil && c.bytes > max {
			// Never so: what is served fits in every namespace
			// (boundPolicies). Should it not, no sidecar is sent more
			// than it takes.
			c, _ = fitNamespace(s.global, s.byNS[ns], ns, nil, max)
		}
		if s.contents == nil {
			s.contents = map[string]*content{}
		}
		s.contents[key] = c
	}
	if c.err != nil {
		return fmt.Errorf("namespace %s: %w", ns, c.err)
	}
	// Each type has its own version, so that a change of endpoints is
	// not a change of clusters (the cache answers a watch whose type's
	// version changed): a rolling Deployment pushes EDS only, and no
	// sidecar re-applies its policies for it. The snapshot's, which
	// names it among the shared ones, is both.
	version := c.version + "." + s.endpoints.version
	if g.version == version {
		return nil
	}
	sh := s.shared[version]
	if sh == nil {
		snap := &cachev3.Snapshot{}
		snap.Resources[types.Cluster] = cachev3.NewResources(c.version, c.clusters)
		snap.Resources[types.Route] = cachev3.NewResources(c.version, c.routes)
		snap.Resources[types.Endpoint] = s.endpoints.resources
		sh = &shared{snap: snap}
		s.shared[version] = sh
	}
	// The cache keeps the snapshot even when answering a watch fails.
	err := s.Cache.SetSnapshot(context.Background(), ns, sh.snap)
	sh.groups++
	s.unshare(g.version)
	g.version = version
	return err
}

// join counts a user of namespace ns (a stream, a fetch) and makes its
// snapshot if it has none. The caller holds mu.
func (s *Server) join(ns string) error {
	g := s.groups[ns]
	if g == nil {
		g = &group{}
		s.groups[ns] = g
	}
	g.users++
	if g.version != "" {
		return nil
	}
	return s.publish(ns)
}

// leave ends a use of namespace ns; the last one drops its snapshot and
// the cache's state for it. The caller holds mu.
func (s *Server) leave(ns string) {
	g := s.groups[ns]
	if g == nil {
		return
	}
	if g.users--; g.users > 0 {
		return
	}
	delete(s.groups, ns)
	delete(s.contents, "ns:"+ns)
	s.Cache.ClearSnapshot(ns)
	s.unshare(g.version)
}

func (s *Server) unshare(version string) {
	if sh := s.shared[version]; sh != nil {
		if sh.groups--; sh.groups == 0 {
			delete(s.shared, version)
		}
	}
}

// Merge is the namespace's policies over the global ones, as a sidecar of
// that namespace is served them: a namespace's policy for a service wins.
func Merge(global, local []*policy.ResiliencePolicy) []*policy.ResiliencePolicy {
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

// endpointContent is the EDS resources of every Service served and
// their version.
type endpointContent struct {
	resources cachev3.Resources
	version   string
	count     int // endpoints
	bytes     int // the resources' size in a response
}

// endpointResources are the ClusterLoadAssignments of eps that every
// sidecar takes (bound), in name order, and a version that changes
// exactly when they do; served says what was left out. A Service whose
// endpoints are left out is sent with its ClusterIPs and no endpoints
// (LeftOut), so that a connection to its ClusterIP keeps its name. No
// endpoints at all have a version too, so that a sidecar asking for them
// is answered (with none) rather than left waiting.
func endpointResources(eps map[string][]xdsclient.Endpoint, clusterIPs map[string][]netip.AddrPort) (endpointContent, EndpointsServed, error) {
	names := slices.Sorted(maps.Keys(eps))
	// Each resource whole, and bare: with its ClusterIPs and no
	// endpoints, sent when its Service's endpoints are left out (the same
	// resource when it has none).
	type encoded struct {
		res, bare types.Resource
		b, bareB  []byte
		endpoints int
		svc       *svcCost
	}
	enc := make(map[string]encoded, len(names))
	bySvc := map[string]*svcCost{}
	var svcs []*svcCost
	for _, name := range names {
		cla := LoadAssignment(name, eps[name], clusterIPs[name]...)
		n := 0
		for _, l := range cla.GetEndpoints() {
			n += len(l.GetLbEndpoints()) // what is sent: Dialable ones only
		}
		res, b, err := premarshaled(cla)
		if err != nil {
			return endpointContent{}, EndpointsServed{}, fmt.Errorf("endpoints %s: %w", name, err)
		}
		e := encoded{res: res, bare: res, b: b, bareB: b, endpoints: n}
		if n > 0 {
			// Made for every Service, not only those left out: the bound
			// needs its size, and it is the name and ClusterIPs alone
			// (about 100 bytes, a fraction of the whole one's encoding).
			if e.bare, e.bareB, err = premarshaled(LoadAssignment(name, nil, clusterIPs[name]...)); err != nil {
				return endpointContent{}, EndpointsServed{}, fmt.Errorf("endpoints %s without endpoints: %w", name, err)
			}
		}
		ns, svc := serviceOfName(name)
		c := bySvc[ns+"/"+svc]
		if c == nil {
			c = &svcCost{ns: ns, name: svc}
			bySvc[ns+"/"+svc] = c
			svcs = append(svcs, c)
		}
		c.endpoints += n
		c.bytes += resourceBytes(len(b))
		c.bare += resourceBytes(len(e.bareB))
		e.svc = c
		enc[name] = e
	}
	bound(svcs)
	var served EndpointsServed
	for _, c := range svcs {
		if c.out != "" {
			served.LeftOut = append(served.LeftOut, LeftOut{Namespace: c.ns, Service: c.name, Endpoints: c.endpoints, Bytes: c.bytes, Reason: c.out, Dropped: c.dropped})
		}
	}
	slices.SortFunc(served.LeftOut, func(a, b LeftOut) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Service, b.Service))
	})
	h := sha256.New()
	items := make([]types.Resource, 0, len(names))
	for _, name := range names {
		e := enc[name]
		if e.svc.dropped != "" {
			continue
		}
		res, b := e.res, e.b
		if e.svc.out != "" {
			res, b = e.bare, e.bareB
		} else {
			served.Endpoints += e.endpoints
		}
		h.Write(b)
		items = append(items, res)
		served.ServicePorts++
		served.Bytes += resourceBytes(len(b))
	}
	version := hex.EncodeToString(h.Sum(nil))[:16]
	return endpointContent{resources: cachev3.NewResources(version, items), version: version, count: served.Endpoints, bytes: served.Bytes}, served, nil
}

// premarshaled is cla encoded once: the same message, its name set and
// everything else held as its encoding (unknown fields, which the
// encoder copies as they are). The snapshot cache encodes every resource
// anew for every stream it answers (go-control-plane v0.14 caches an
// encoding per response, not per resource), so a push of every Service's
// endpoints to 1,000 sidecars was 1,000 encodings of the whole set;
// now it is 1,000 copies of its bytes. The bytes on the wire are the
// same as cla's own encoding (b): the name is field 1, the rest follow
// in field order.
func premarshaled(cla *endpointv3.ClusterLoadAssignment) (*endpointv3.ClusterLoadAssignment, []byte, error) {
	name := cla.GetClusterName()
	cla.ClusterName = ""
	rest, err := proto.MarshalOptions{Deterministic: true}.Marshal(cla)
	if err != nil {
		return nil, nil, err
	}
	out := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	out.ProtoReflect().SetUnknown(protoreflect.RawFields(rest))
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(out)
	return out, b, err
}

// Resources are the clusters and routes of pols as a node of namespace
// ns is served them (every short name resolved in ns, whichever namespace
// the policy was written in: envoy.TranslateFor), and a version that
// changes exactly when they do (a hash of their encoding).
func Resources(pols []*policy.ResiliencePolicy, ns string) (clusters, routes []types.Resource, version string, err error) {
	c := resources(pols, ns)
	return c.clusters, c.routes, c.version, c.err
}

// resources is Resources with the clusters' sizes, in all and by policy
// (sizes.cost, by service), as the CDS response carries them.
func resources(pols []*policy.ResiliencePolicy, ns string) *content {
	fail := func(err error) *content { return &content{err: err} }
	// The cache keys resources by name and would keep one of two with
	// the same: every policy has a cluster of its own name, or the set is
	// refused with an error naming the two.
	if err := envoy.CheckNamesFor(pols, ns); err != nil {
		return fail(err)
	}
	res, err := envoy.TranslateFor(pols, ns)
	if err != nil {
		return fail(err)
	}
	c := &content{sizes: sizes{cost: make(map[string]int, len(pols))}}
	h := sha256.New()
	add := func(m proto.Message) (int, error) {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		h.Write(b)
		return len(b), err
	}
	cluster := func(cl *clusterv3.Cluster) error {
		c.clusters = append(c.clusters, cl)
		n, err := add(cl)
		c.cost[clusterService(cl)] = clusterBytes(n)
		c.bytes += clusterBytes(n)
		return err
	}
	for _, cl := range res.Clusters {
		if err := cluster(cl); err != nil {
			return fail(err)
		}
	}
	for _, p := range pols {
		if p.Spec.Service != policy.DefaultService {
			continue
		}
		cl, err := envoy.DefaultsCluster(p)
		if err != nil {
			return fail(fmt.Errorf("defaults policy %q: %w", p.Metadata.Name, err))
		}
		if err := cluster(cl); err != nil {
			return fail(err)
		}
	}
	c.routes = []types.Resource{res.Routes}
	if _, err := add(res.Routes); err != nil {
		return fail(err)
	}
	c.version = hex.EncodeToString(h.Sum(nil))[:16]
	return c
}

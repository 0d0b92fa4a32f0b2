package xds

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

const clusterType = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

// meshWide is what a controller in namespace "mesh" serves to every
// namespace: defaults of 9 failures, and 7 for geo.
func meshWide(t testing.TB) []*policy.ResiliencePolicy {
	return append(pol(t, "mesh", `{service: "*", circuitBreaker: {consecutiveFailures: 9}}`),
		pol(t, "mesh", `{service: geo, circuitBreaker: {consecutiveFailures: 7}}`)...)
}

func shopOwn(t testing.TB) map[string][]*policy.ResiliencePolicy {
	return map[string][]*policy.ResiliencePolicy{"shop": pol(t, "shop", `{service: geo, circuitBreaker: {consecutiveFailures: 3}}`)}
}

// meshServer serves meshWide and shopOwn, set before it listens, until
// the test ends; ctx ends with it too.
func meshServer(t *testing.T) (ctx context.Context, s *Server, addr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s = NewServer(ctx, nil)
	if err := s.Set(meshWide(t), shopOwn(t)); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	t.Cleanup(stop)
	return ctx, s, addr
}

// firstApply runs a client and returns how long it took from its start to
// its first applied response.
func firstApply(t testing.TB, ctx context.Context, c *xdsclient.Client, r *recorder) time.Duration {
	t.Helper()
	start := time.Now()
	go c.Run(ctx)
	select {
	case <-r.changed:
		return time.Since(start)
	case <-time.After(10 * time.Second):
		t.Fatalf("node %s: no snapshot in 10 s", c.Node.ID)
		return 0
	}
}

// TestEveryNamespaceGetsClusterWide starts from what production starts
// from: the controller has published its policies, none of which names
// the namespaces below; sidecars connect after that last publish. Each
// gets the cluster-wide set at once: one in a namespace no policy names,
// one whose node names no namespace (it is in "default"), and one in a
// namespace that first appears after another sidecar of its namespace
// came and went.
func TestEveryNamespaceGetsClusterWide(t *testing.T) {
	ctx, s, addr := meshServer(t)

	nodes := map[string]*xdsclient.NodeInfo{
		"unnamed":      xdsclient.Node("web-1", "checkout", "web"),
		"no namespace": {ID: "envoy-1", Cluster: "edge"},
	}
	for what, n := range nodes {
		r := newRecorder()
		c := client(addr, "", r)
		c.Node = n
		t.Logf("%s: connect → first snapshot %v", what, firstApply(t, ctx, c, r))
		if r.consecutive("geo") != 7 || r.consecutive("*") != 9 {
			t.Errorf("%s: geo %d, * %d; want the cluster-wide 7 and 9", what, r.consecutive("geo"), r.consecutive("*"))
		}
	}
	if v := s.Version(DefaultNamespace); v == "" {
		t.Error("the node without a namespace is not served as namespace default")
	}

	// A namespace's sidecar leaves (its snapshot is dropped) and another
	// comes: it is served again from what is known now.
	first, leave := context.WithCancel(ctx)
	gone := newRecorder()
	firstApply(t, first, client(addr, "late", gone), gone)
	leave()
	waitFor(t, "the snapshot of a namespace without sidecars dropped", func() bool { return s.Version("late") == "" })
	r := newRecorder()
	firstApply(t, ctx, client(addr, "late", r), r)
	if r.consecutive("geo") != 7 {
		t.Errorf("a namespace back after its snapshot was dropped: geo %d, want 7", r.consecutive("geo"))
	}
}

// TestNamespaceLosesItsPolicies: a namespace whose last own policy goes
// falls back to the cluster-wide set, neither keeping its stale own set
// nor getting nothing; and it takes its own again when one comes back.
func TestNamespaceLosesItsPolicies(t *testing.T) {
	ctx, s, addr := meshServer(t)
	r := newRecorder()
	go client(addr, "shop", r).Run(ctx)
	waitFor(t, "shop's own policy", func() bool { return r.consecutive("geo") == 3 })

	if err := s.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the fall-back to the cluster-wide geo", func() bool { return r.consecutive("geo") == 7 })
	if r.consecutive("*") != 9 {
		t.Fatalf("after the fall-back * is %d, want 9", r.consecutive("*"))
	}
	// The same through SetNamespace: emptied, then given back.
	if err := s.SetNamespace("shop", shopOwn(t)["shop"]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "shop's policy back", func() bool { return r.consecutive("geo") == 3 })
	if err := s.SetNamespace("shop", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the fall-back again", func() bool { return r.consecutive("geo") == 7 })
}

// TestWaitsForTheFirstPolicies: a sidecar that connects before the
// controller has read its policies (a controller restart: every sidecar
// reconnects at once) waits for them, and is not told to drop what it
// has by an empty set.
func TestWaitsForTheFirstPolicies(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	r := newRecorder()
	go client(addr, "shop", r).Run(ctx)
	waitFor(t, "the watch", func() bool { return slices.Contains(s.Cache.GetStatusKeys(), "shop") })
	if _, err := s.Cache.GetSnapshot("shop"); err == nil {
		t.Fatal("a snapshot before any policies were set")
	}
	if err := s.Set(meshWide(t), shopOwn(t)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first policies", func() bool { return r.consecutive("geo") == 3 })
}

// TestSnapshotsFollowStreams bounds what clients can make the server
// hold: namespaces without policies of their own share one snapshot, and
// a namespace's snapshot and the cache's state for it go with its last
// stream. A node naming thousands of namespaces costs while connected
// and nothing after.
func TestSnapshotsFollowStreams(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	// Cluster-wide policies that read the same from every namespace (a
	// short name would not: it is a Service of each namespace, and each
	// has content of its own; TestClusterWideResolvesInNodeNamespace).
	global := append(pol(t, "mesh", `{service: "*", circuitBreaker: {consecutiveFailures: 9}}`),
		pol(t, "mesh", `{service: geo.mesh, circuitBreaker: {consecutiveFailures: 7}}`)...)
	if err := s.Set(global, shopOwn(t)); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	shop := newRecorder()
	go client(addr, "shop", shop).Run(ctx)

	const n = 200
	many, leave := context.WithCancel(ctx)
	recs := make([]*recorder, n)
	for i := range recs {
		recs[i] = newRecorder()
		go client(addr, fmt.Sprintf("ns-%d", i), recs[i]).Run(many)
	}
	for _, r := range recs {
		waitFor(t, "every namespace served", func() bool { return r.consecutive("geo.mesh") == 7 })
	}
	waitFor(t, "shop served", func() bool { return shop.consecutive("geo") == 3 })
	first, _ := s.Cache.GetSnapshot("ns-0")
	for i := 1; i < n; i++ {
		if snap, _ := s.Cache.GetSnapshot(fmt.Sprintf("ns-%d", i)); snap != first {
			t.Fatalf("ns-%d has a snapshot of its own; namespaces with the same content share one", i)
		}
	}
	s.mu.Lock()
	groups, shared := len(s.groups), len(s.shared)
	s.mu.Unlock()
	if groups != n+1 || shared != 2 {
		t.Fatalf("%d namespaces, %d snapshots; want %d and 2 (the cluster-wide set and shop's)", groups, shared, n+1)
	}

	leave()
	waitFor(t, "the snapshots of the namespaces that left dropped", func() bool {
		return slices.Equal(s.Cache.GetStatusKeys(), []string{"shop"})
	})
	s.mu.Lock()
	groups, shared, streams := len(s.groups), len(s.shared), len(s.streams)
	s.mu.Unlock()
	if groups != 1 || shared != 1 || streams != 1 {
		t.Fatalf("after they left: %d namespaces, %d snapshots, %d streams; want 1 each (shop)", groups, shared, streams)
	}
	// Shop's sidecar still follows changes.
	if err := s.SetNamespace("shop", pol(t, "shop", `{service: geo, circuitBreaker: {consecutiveFailures: 4}}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "shop's change", func() bool { return shop.consecutive("geo") == 4 })
}

// TestConnectWhilePublishing: sidecars connecting while the policies
// change all end with the last ones: no change falls between a stream's
// snapshot being made and its watch being created.
func TestConnectWhilePublishing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	global := func(n int) []*policy.ResiliencePolicy {
		return pol(t, "mesh", fmt.Sprintf(`{service: geo, circuitBreaker: {consecutiveFailures: %d}}`, n))
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; i <= 50; i++ {
			if err := s.Set(global(i), nil); err != nil {
				t.Error(err)
			}
		}
	}()
	recs := make([]*recorder, 40)
	for i := range recs {
		recs[i] = newRecorder()
		go client(addr, fmt.Sprintf("ns-%d", i%8), recs[i]).Run(ctx)
	}
	wg.Wait()
	for _, r := range recs {
		waitFor(t, "the last change", func() bool { return r.consecutive("geo") == 50 })
	}
}

// rawConn is a gRPC connection for the xDS calls the sidecar's client
// does not make.
func rawConn(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestDeltaAndFetch: the other ways in (incremental ADS, as Envoy may
// use, and a one-off fetch) serve a namespace no policy names too; a
// fetch leaves nothing behind.
func TestDeltaAndFetch(t *testing.T) {
	ctx, s, addr := meshServer(t)
	conn := rawConn(t, addr)

	node := typedNode("web-1", "checkout", "web")
	fetched, err := clusterservice.NewClusterDiscoveryServiceClient(conn).FetchClusters(ctx, &discovery.DiscoveryRequest{Node: node, TypeUrl: clusterType})
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if len(fetched.GetResources()) != 2 {
		t.Fatalf("fetch: %d clusters, want the cluster-wide 2 (geo and the defaults)", len(fetched.GetResources()))
	}
	if keys := s.Cache.GetStatusKeys(); len(keys) != 0 {
		t.Fatalf("a fetch left %v behind", keys)
	}

	sctx, end := context.WithTimeout(ctx, 10*time.Second)
	defer end()
	delta, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: clusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := delta.Recv()
	if err != nil {
		t.Fatalf("delta: %v", err)
	}
	if len(resp.GetResources()) != 2 {
		t.Fatalf("delta: %d clusters, want 2", len(resp.GetResources()))
	}
}

// TestRefusedNodes: a node whose namespace cannot be one, or that names
// another namespace later on the same stream, is refused, so that a
// client holds at most one namespace per stream and no key is an
// arbitrary string.
func TestRefusedNodes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	if err := s.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	ads := discovery.NewAggregatedDiscoveryServiceClient(rawConn(t, addr))
	stream := func() discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		sctx, end := context.WithTimeout(ctx, 10*time.Second)
		t.Cleanup(end)
		st, err := ads.StreamAggregatedResources(sctx)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	st := stream()
	if err := st.Send(&discovery.DiscoveryRequest{Node: typedNode("p", "Not_A_Namespace", "web"), TypeUrl: clusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a namespace that cannot be one: %v, want InvalidArgument", err)
	}

	st = stream()
	if err := st.Send(&discovery.DiscoveryRequest{Node: typedNode("p", "a", "web"), TypeUrl: clusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{Node: typedNode("p", "b", "web"), TypeUrl: clusterType,
		VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a node that moved namespace: %v, want InvalidArgument", err)
	}
	waitFor(t, "nothing held for the refused streams", func() bool { return len(s.Cache.GetStatusKeys()) == 0 })
}

// BenchmarkSetManyNamespaces is the cost of a change to the cluster-wide
// policies with 1,000 namespaces connected, none with policies of its
// own: translated once for all of them when the cluster-wide policies
// read the same everywhere (qualified names), once per namespace when one
// is a short name (a Service of each namespace).
func BenchmarkSetManyNamespaces(b *testing.B) {
	for _, bc := range []struct{ name, geo string }{{"qualified", "geo.mesh"}, {"short name", "geo"}} {
		b.Run(bc.name, func(b *testing.B) {
			s := NewServer(context.Background(), nil)
			s.mu.Lock()
			for i := range 1000 {
				if err := s.join(fmt.Sprintf("ns-%d", i)); err != nil {
					b.Fatal(err)
				}
			}
			s.mu.Unlock()
			defaults := pol(b, "mesh", `{service: "*", circuitBreaker: {consecutiveFailures: 9}}`)
			sets := [][]*policy.ResiliencePolicy{
				append(pol(b, "mesh", `{service: `+bc.geo+`, circuitBreaker: {consecutiveFailures: 7}}`), defaults...),
				append(pol(b, "mesh", `{service: `+bc.geo+`, circuitBreaker: {consecutiveFailures: 2}}`), defaults...),
			}
			i := 0
			for b.Loop() {
				if err := s.Set(sets[i%2], nil); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// TestClusterWideWithoutNamespace: a cluster-wide policy that names no
// namespace (a file without metadata.namespace) resolves its short name
// in each sidecar's namespace, so those namespaces do not share content.
func TestClusterWideWithoutNamespace(t *testing.T) {
	pols, err := policy.Decode("all.yaml", []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\nspec: {service: geo}\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(context.Background(), nil)
	s.mu.Lock()
	for _, ns := range []string{"a", "b"} {
		if err := s.join(ns); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Unlock()
	if err := s.Set(pols, nil); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"a", "b"} {
		snap, err := s.Cache.GetSnapshot(ns)
		if err != nil {
			t.Fatal(err)
		}
		want := "outbound|0||geo." + ns + ".svc.cluster.local" // any port
		if _, ok := snap.GetResources(clusterType)[want]; !ok {
			t.Errorf("namespace %s: clusters %v, want %s", ns, slices.Collect(maps.Keys(snap.GetResources(clusterType))), want)
		}
	}
}

// typedNode is xdsclient.Node as go-control-plane's type, for requests
// the tests send with the generated client.
func typedNode(pod, namespace, service string) *corev3.Node {
	n := xdsclient.Node(pod, namespace, service)
	md := map[string]any{}
	for k, v := range n.Metadata {
		md[k] = v
	}
	st, _ := structpb.NewStruct(md)
	return &corev3.Node{Id: n.ID, Cluster: n.Cluster, Metadata: st}
}

package xds

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/minimesh/minimesh/internal/grpcwire"
	"github.com/minimesh/minimesh/policy"
)

// numbered is n policies of namespace ns, oldest first, named
// <prefix>-<from>... for the services <service>-<from>...: with from
// 10 and n ≤ 90, every name has the same length, and so every policy
// the same size. fat fills every field, with long names.
func numbered(t testing.TB, ns, prefix, service string, from, n int, fat bool) []*policy.ResiliencePolicy {
	t.Helper()
	var b strings.Builder
	for i := from; i < from+n; i++ {
		if fat {
			fmt.Fprintf(&b, `---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: %s-%d, namespace: %s}
spec:
  service: %s-%d
  timeout: 2s
  retries: {attempts: 2, perTryTimeout: 500ms, retryOn: [connect-failure, "502", "503", "504", reset, timeout], backoff: {base: 25ms, max: 250ms}, budget: {ratio: 0.2, minPerSecond: 10}}
  circuitBreaker: {consecutiveFailures: 5, openTimeout: 60s, halfOpenRequests: 2, failureRate: {threshold: 0.5, minRequests: 20, window: 10s}, failOn: [5xx, connect-failure, timeout, reset]}
  outlierDetection: {consecutiveFailures: 5, baseEjectionTime: 30s, maxEjectionTime: 300s, maxEjectionPercent: 50}
`, prefix, i, ns, service, i)
			continue
		}
		fmt.Fprintf(&b, "---\napiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: %s-%d, namespace: %s}\nspec: {service: %s-%d, timeout: 2s, retries: {attempts: 3}, circuitBreaker: {consecutiveFailures: 5}}\n", prefix, i, ns, service, i)
	}
	ps, err := policy.Decode(ns+".yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// cdsBytes is the size of the clusters of namespace ns's snapshot in a
// CDS response, and their policies' names (ns/name), sorted.
func cdsBytes(t *testing.T, s *Server, ns string) (int, []string) {
	t.Helper()
	snap, err := s.Cache.GetSnapshot(ns)
	if err != nil {
		t.Fatalf("namespace %s: %v", ns, err)
	}
	n := 0
	var names []string
	for _, r := range snap.GetResources(clusterType) {
		c := r.(*clusterv3.Cluster)
		n += clusterBytes(proto.Size(c))
		f := c.GetMetadata().GetFilterMetadata()["minimesh.io"].GetFields()
		names = append(names, f["namespace"].GetStringValue()+"/"+f["policy"].GetStringValue())
	}
	slices.Sort(names)
	return n, names
}

// names are the policies' ns/name, sorted.
func names(pols []*policy.ResiliencePolicy) []string {
	var out []string
	for _, p := range pols {
		out = append(out, p.Metadata.Namespace+"/"+p.Metadata.Name)
	}
	slices.Sort(out)
	return out
}

func leftOutNames(left []PolicyLeftOut) []string {
	var out []string
	for _, l := range left {
		where := l.Namespace
		if l.ClusterWide {
			where = "*"
		}
		out = append(out, where+":"+l.Policy.Metadata.Namespace+"/"+l.Policy.Metadata.Name)
	}
	return out
}

// cost is the bytes p's cluster adds to the CDS response of namespace ns.
func cost(t *testing.T, p *policy.ResiliencePolicy, ns string) int {
	t.Helper()
	c := resources([]*policy.ResiliencePolicy{p}, ns)
	if c.err != nil {
		t.Fatal(c.err)
	}
	return c.bytes
}

// TestClusterBytesAsSent: the size the bound counts is the size of the
// clusters in the CDS response the server sends, to the byte.
func TestClusterBytesAsSent(t *testing.T) {
	pols := append(numbered(t, "shop", "p", "svc", 10, 50, false), pol(t, "shop", `{service: "*", timeout: 1s}`)...)
	c := resources(pols, "shop")
	if c.err != nil {
		t.Fatal(c.err)
	}
	resp := &discovery.DiscoveryResponse{VersionInfo: c.version, TypeUrl: clusterType, Nonce: "1"}
	empty := proto.Size(resp)
	sum := 0
	for _, r := range c.clusters {
		a, err := anypb.New(r.(proto.Message))
		if err != nil {
			t.Fatal(err)
		}
		resp.Resources = append(resp.Resources, a)
		sum += c.cost[clusterService(r.(*clusterv3.Cluster))]
	}
	if got := proto.Size(resp) - empty; got != c.bytes || sum != c.bytes {
		t.Errorf("the response's clusters are %d bytes; counted %d in all, %d by policy", got, c.bytes, sum)
	}
	if len(c.cost) != len(pols) {
		t.Errorf("costs of %d policies, want %d", len(c.cost), len(pols))
	}
	t.Logf("%d policies: %d bytes of clusters, %d per policy", len(pols), c.bytes, c.bytes/len(pols))
}

// TestClusterBound: what would make a namespace's CDS response larger
// than the bound is left out, the newest first (the last of each list),
// the cluster-wide ones measured in the longest namespace; every
// connected namespace is served within the bound, and what is left out
// is reported whether or not its namespace has a sidecar. Before, the
// whole set was sent, and a sidecar's transport refused it whole.
func TestClusterBound(t *testing.T) {
	const longNS = "n23456789012345678901234567890123456789012345678901234567890123"
	mesh := func(n int) []*policy.ResiliencePolicy { return numbered(t, "mesh", "all", "geo.mesh", 10, n, false) }
	own := func(n int) []*policy.ResiliencePolicy { return numbered(t, "shop", "p", "svc", 10, n, false) }
	short := func(n int) []*policy.ResiliencePolicy { return numbered(t, "mesh", "short", "web", 10, n, false) }
	one := own(1)[0]
	perOwn := cost(t, one, "shop")
	perMesh := cost(t, mesh(1)[0], "shop")
	perShortLongest := cost(t, short(1)[0], longestNamespace)
	// The cluster-wide policy for svc-19, the service of shop's newest.
	override, err := policy.Decode("mesh.yaml", []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: wide-19, namespace: mesh}\nspec: {service: svc-19}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		global []*policy.ResiliencePolicy
		byNS   map[string][]*policy.ResiliencePolicy
		bound  int
		// served: the policies each namespace is sent; left: what is
		// left out, as leftOutNames says it.
		served map[string][]string
		left   []string
	}{
		{
			name:   "within the bound",
			global: mesh(2), byNS: map[string][]*policy.ResiliencePolicy{"shop": own(10)},
			bound:  2*perMesh + 10*perOwn,
			served: map[string][]string{"shop": names(append(mesh(2), own(10)...)), "web": names(mesh(2))},
		},
		{
			name:   "a namespace over: its newest are left out, no other namespace loses any",
			global: mesh(2), byNS: map[string][]*policy.ResiliencePolicy{"shop": own(10), "idle": numbered(t, "idle", "p", "svc", 10, 10, false)},
			bound:  2*perMesh + 6*perOwn + perOwn/2,
			served: map[string][]string{"shop": names(append(mesh(2), own(6)...)), "web": names(mesh(2))},
			left:   []string{"idle:idle/p-16", "idle:idle/p-17", "idle:idle/p-18", "idle:idle/p-19", "shop:shop/p-16", "shop:shop/p-17", "shop:shop/p-18", "shop:shop/p-19"},
		},
		{
			name:   "cluster-wide over: the newest left out of every namespace, measured in the longest",
			global: short(10), byNS: map[string][]*policy.ResiliencePolicy{"shop": own(1)},
			bound:  7*perShortLongest - 1,
			served: map[string][]string{"web": names(short(6)), longNS: names(short(6)), "shop": names(append(short(6), own(1)...))},
			left:   []string{"*:mesh/short-16", "*:mesh/short-17", "*:mesh/short-18", "*:mesh/short-19"},
		},
		{
			name:   "an override left out: the cluster-wide policy applies again",
			global: override, byNS: map[string][]*policy.ResiliencePolicy{"shop": own(10)},
			bound:  9*perOwn + cost(t, override[0], longestNamespace),
			served: map[string][]string{"shop": names(append(own(9), override...)), "web": names(override)},
			left:   []string{"shop:shop/p-19"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServer(context.Background(), nil)
			s.maxClusterBytes = tc.bound
			s.mu.Lock()
			for ns := range tc.served {
				if err := s.join(ns); err != nil {
					t.Fatal(err)
				}
			}
			s.mu.Unlock()
			if err := s.Set(tc.global, tc.byNS); err != nil {
				t.Fatal(err)
			}
			for ns, want := range tc.served {
				n, got := cdsBytes(t, s, ns)
				if n > tc.bound {
					t.Errorf("namespace %s is sent %d bytes of clusters, over the bound %d", ns, n, tc.bound)
				}
				if !slices.Equal(got, want) {
					t.Errorf("namespace %s is sent %v\nwant %v", ns, got, want)
				}
			}
			if got := leftOutNames(s.PoliciesLeftOut()); !slices.Equal(got, tc.left) {
				t.Errorf("left out %v, want %v", got, tc.left)
			}
			if tc.name == "an override left out: the cluster-wide policy applies again" {
				snap, _ := s.Cache.GetSnapshot("shop")
				c := snap.GetResources(clusterType)["outbound|0||svc-19.shop.svc.cluster.local"]
				if got := c.(*clusterv3.Cluster).GetMetadata().GetFilterMetadata()["minimesh.io"].GetFields()["policy"].GetStringValue(); got != "wide-19" {
					t.Errorf("shop's svc-19 is served by %q, want the cluster-wide wide-19", got)
				}
			}
		})
	}
}

// TestClusterBoundReplicasAgree: two replicas given the same policies,
// with different sidecars connected, leave out the same policies (what
// the statuses say) and serve a namespace the same version: versions are
// hashes of the content, and a sidecar moving between replicas is not
// sent its policies again, nor told a different set.
func TestClusterBoundReplicasAgree(t *testing.T) {
	global := numbered(t, "mesh", "short", "web", 10, 10, false)
	byNS := map[string][]*policy.ResiliencePolicy{"shop": numbered(t, "shop", "p", "svc", 10, 20, false)}
	bound := 6*cost(t, global[0], longestNamespace) + 8*cost(t, byNS["shop"][0], "shop")
	a, b := NewServer(context.Background(), nil), NewServer(context.Background(), nil)
	a.maxClusterBytes, b.maxClusterBytes = bound, bound
	a.mu.Lock()
	for _, ns := range []string{"shop", "web", "a"} {
		if err := a.join(ns); err != nil {
			t.Fatal(err)
		}
	}
	a.mu.Unlock()
	for _, s := range []*Server{a, b} {
		if err := s.Set(global, byNS); err != nil {
			t.Fatal(err)
		}
	}
	la, lb := leftOutNames(a.PoliciesLeftOut()), leftOutNames(b.PoliciesLeftOut())
	if len(la) == 0 || !slices.Equal(la, lb) {
		t.Fatalf("replica A left out %v, replica B %v", la, lb)
	}
	b.mu.Lock()
	for _, ns := range []string{"shop", "a"} {
		if err := b.join(ns); err != nil {
			t.Fatal(err)
		}
	}
	b.mu.Unlock()
	for _, ns := range []string{"shop", "a"} {
		if va, vb := a.Version(ns), b.Version(ns); va != vb {
			t.Errorf("namespace %s: version %s on replica A, %s on B", ns, va, vb)
		}
	}
}

// TestPoliciesLeftOutReported: the controller's log names what is left
// out, when that changes, and minimesh_cds_policies_left_out counts it
// by namespace; both say when every policy is served again.
func TestPoliciesLeftOutReported(t *testing.T) {
	var logged safeBuffer
	reg := prometheus.NewRegistry()
	s := NewServer(context.Background(), nil)
	if err := s.ReportPolicies(slog.New(slog.NewTextHandler(&logged, nil)), reg); err != nil {
		t.Fatal(err)
	}
	own := numbered(t, "shop", "p", "svc", 10, 10, false)
	s.maxClusterBytes = 6*cost(t, own[0], "shop") + 10
	if err := s.Set(nil, map[string][]*policy.ResiliencePolicy{"shop": own}); err != nil {
		t.Fatal(err)
	}
	if got := leftOutGauge(t, reg, "shop"); got != 4 {
		t.Errorf(`minimesh_cds_policies_left_out{namespace="shop"} = %v, want 4`, got)
	}
	if !strings.Contains(logged.String(), "policies_left_out=4") || !strings.Contains(logged.String(), "shop/p-19") {
		t.Errorf("the log does not name what is left out: %s", logged.String())
	}
	n := logged.Len()
	if err := s.Set(nil, map[string][]*policy.ResiliencePolicy{"shop": own}); err != nil {
		t.Fatal(err)
	}
	if logged.Len() != n {
		t.Errorf("logged again with nothing changed: %s", logged.String()[n:])
	}
	if err := s.Set(nil, map[string][]*policy.ResiliencePolicy{"shop": own[:3]}); err != nil {
		t.Fatal(err)
	}
	if c, err := testutil.GatherAndCount(reg, "minimesh_cds_policies_left_out"); err != nil || c != 0 {
		t.Errorf("minimesh_cds_policies_left_out has %d series (%v), want none", c, err)
	}
	if !strings.Contains(logged.String()[n:], "every policy is served again") {
		t.Errorf("no line says every policy is served again: %s", logged.String()[n:])
	}
}

// leftOutGauge is minimesh_cds_policies_left_out{namespace=ns} in reg.
func leftOutGauge(t *testing.T, reg *prometheus.Registry, ns string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "minimesh_cds_policies_left_out" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == ns {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// TestSidecarTakesEveryCDSResponse: a namespace with more policies than
// fit in the sidecar's 4 MiB message (2,400 policies with every field,
// 4.5 MB of clusters) is served what fits, and a real sidecar applies it;
// the oldest are served, the newest left out. Before, the server sent the
// whole set, the sidecar's transport refused it ("received message larger
// than max") and ended the stream, endpoints and all, applied nothing,
// and reconnected to be sent the same again, while Set said nothing.
func TestSidecarTakesEveryCDSResponse(t *testing.T) {
	if testing.Short() {
		t.Skip("translates 2,400 policies (runs in make test, which is not -short)")
	}
	const n = 2400
	pols := numbered(t, "shop", strings.Repeat("n", 180), strings.Repeat("s", 50), 1000, n, true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	start := time.Now()
	if err := s.Set(nil, map[string][]*policy.ResiliencePolicy{"shop": pols}); err != nil {
		t.Fatalf("Set: %v", err)
	}
	set := time.Since(start)
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	r := newRecorder()
	go client(addr, "shop", r).Run(ctx)
	select {
	case <-r.changed:
	case <-time.After(5 * time.Minute):
		t.Fatalf("the sidecar never got the policies of its namespace (%d policies; Set returned no error)", n)
	}
	t.Logf("Set took %v, the sidecar's first answer %v more", set, time.Since(start)-set)
	r.mu.Lock()
	got := len(r.last)
	r.mu.Unlock()
	size, _ := cdsBytes(t, s, "shop")
	if size > MaxClusterBytes || size+1<<10 > grpcwire.DefaultMaxMessage {
		t.Errorf("the CDS response carries %d bytes of clusters: over %d", size, MaxClusterBytes)
	}
	left := s.PoliciesLeftOut()
	if got == 0 || got+len(left) != n {
		t.Fatalf("the sidecar applied %d policies, %d left out, of %d", got, len(left), n)
	}
	for i, l := range left {
		if l.Policy != pols[got+i] {
			t.Fatalf("left out %s, want the newest (%s on)", l.Policy.Metadata.Name, pols[got].Metadata.Name)
		}
	}
	t.Logf("%d of %d policies served, %d bytes of clusters (%d a policy); %d left out",
		got, n, size, size/got, len(left))
}

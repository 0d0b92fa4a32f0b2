package xds

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

func pol(t testing.TB, ns, yaml string) []*policy.ResiliencePolicy {
	t.Helper()
	ps, err := policy.Decode(ns+".yaml", []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: p, namespace: "+ns+"}\nspec: "+yaml+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// serve runs s on addr ("127.0.0.1:0" for any); stop ends it.
func serve(t testing.TB, s *Server, addr string) (string, func()) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	// WaitForHandlers: stop returns once every stream's handler has, so
	// that a test's streams are not still held in the next test's heap
	// (TestStuckStreamsFreed measures from it).
	g := grpc.NewServer(grpc.WaitForHandlers(true))
	s.Register(g)
	go g.Serve(l)
	return l.Addr().String(), g.Stop
}

// recorder is a sidecar's Apply: the last policies and every version.
type recorder struct {
	mu       sync.Mutex
	versions []string
	last     []*policy.ResiliencePolicy
	changed  chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 100)} }

func (r *recorder) apply(pols []*policy.ResiliencePolicy, v string) error {
	r.mu.Lock()
	r.versions = append(r.versions, v)
	r.last = pols
	r.mu.Unlock()
	r.changed <- struct{}{}
	return nil
}

func (r *recorder) consecutive(service string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.last {
		if p.Spec.Service == service {
			return p.Spec.CircuitBreaker.ConsecutiveFailures
		}
	}
	return -1
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func client(addr, ns string, r *recorder) *xdsclient.Client {
	return &xdsclient.Client{Addr: addr, Node: xdsclient.Node("pod", ns, "web"), Apply: r.apply,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
}

// TestServeNamespaces: each sidecar gets its namespace's policies over the
// global ones, and every change reaches every sidecar.
func TestServeNamespaces(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	// As the controller sets them: "other" is named by no policy.
	if err := s.Set(pol(t, "mesh", `{service: "*", circuitBreaker: {consecutiveFailures: 9}}`),
		map[string][]*policy.ResiliencePolicy{"shop": pol(t, "shop", `{service: geo, circuitBreaker: {consecutiveFailures: 3}}`)}); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()

	const n = 20
	shop := make([]*recorder, n)
	for i := range shop {
		shop[i] = newRecorder()
		go client(addr, "shop", shop[i]).Run(ctx)
	}
	other := newRecorder()
	go client(addr, "other", other).Run(ctx)

	for _, r := range shop {
		waitFor(t, "shop policies", func() bool { return r.consecutive("geo") == 3 && r.consecutive("*") == 9 })
	}
	waitFor(t, "other's policies", func() bool { return other.consecutive("*") == 9 })
	if other.consecutive("geo") != -1 {
		t.Fatal("a sidecar of another namespace got shop's policy")
	}

	// A change reaches every sidecar of the namespace.
	if err := s.SetNamespace("shop", pol(t, "shop", `{service: geo, circuitBreaker: {consecutiveFailures: 2}}`)); err != nil {
		t.Fatal(err)
	}
	for _, r := range shop {
		waitFor(t, "the change", func() bool { return r.consecutive("geo") == 2 })
	}
	// The same policies again publish nothing new.
	v := s.Version("shop")
	if err := s.SetNamespace("shop", pol(t, "shop", `{service: geo, circuitBreaker: {consecutiveFailures: 2}}`)); err != nil || s.Version("shop") != v {
		t.Fatalf("unchanged policies changed the version: %v", err)
	}
}

// TestNackKeepsLastGood: a response with a cluster the sidecar cannot
// decode is NACKed, and that cluster's last good policy stays (the rest
// of the response is applied: xdsclient, partial CDS).
func TestNackKeepsLastGood(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := prometheus.NewRegistry()
	s := NewServer(ctx, Callbacks(slog.New(slog.NewTextHandler(io.Discard, nil)), reg))
	if err := s.SetNamespace("shop", pol(t, "shop", `{service: geo, circuitBreaker: {consecutiveFailures: 3}}`)); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	r := newRecorder()
	go client(addr, "shop", r).Run(ctx)
	waitFor(t, "first policies", func() bool { return r.consecutive("geo") == 3 })
	waitFor(t, "the stream gauge", func() bool { return gauge(t, reg, "minimesh_xds_streams") == 1 })

	bad := &clusterv3.Cluster{Name: "outbound|0||geo.shop.svc.cluster.local", ConnectTimeout: nil} // no minimesh metadata
	snap, err := cachev3.NewSnapshot("bad-1", map[resource.Type][]types.Resource{resource.ClusterType: {bad}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Cache.SetSnapshot(ctx, "shop", snap); err != nil {
		t.Fatal(err)
	}
	applies := func() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.versions) }
	waitFor(t, "the response applied without its bad cluster", func() bool { return applies() >= 2 })
	if applied := applies(); applied != 2 || r.consecutive("geo") != 3 {
		t.Fatalf("after a bad response: %d applies, geo=%d; want it applied without its cluster, geo's policy kept", applied, r.consecutive("geo"))
	}
	waitFor(t, "the NACK counted", func() bool { return gauge(t, reg, "minimesh_xds_nacks_total") >= 1 })
	// The server answers a NACK with the same content at once; the client
	// must not spin on it.
	time.Sleep(time.Second)
	if n := gauge(t, reg, "minimesh_xds_nacks_total"); n > 3 {
		t.Fatalf("%v NACKs in a second: the client and the server spin on refused content", n)
	}
	// New, good content is taken at once.
	if err := s.SetNamespace("shop", pol(t, "shop", `{service: geo, circuitBreaker: {consecutiveFailures: 5}}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "good content after a NACK", func() bool { return r.consecutive("geo") == 5 })
}

// gauge reads one metric's value from reg.
func gauge(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// TestStaticStability: with the control plane gone the sidecar keeps its
// policies, and it resyncs when the control plane is back.
func TestStaticStability(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	if err := s.SetNamespace("shop", pol(t, "shop", `{service: geo, circuitBreaker: {consecutiveFailures: 3}}`)); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	r := newRecorder()
	go client(addr, "shop", r).Run(ctx)
	waitFor(t, "first policies", func() bool { return r.consecutive("geo") == 3 })
	stop()
	time.Sleep(300 * time.Millisecond)
	if r.consecutive("geo") != 3 {
		t.Fatal("lost the policies when the control plane went away")
	}
	// A restarted control plane (a new process: new cache) on the same
	// address.
	s2 := NewServer(ctx, nil)
	if err := s2.SetNamespace("shop", pol(t, "shop", `{service: geo, circuitBreaker: {consecutiveFailures: 4}}`)); err != nil {
		t.Fatal(err)
	}
	_, stop2 := serve(t, s2, addr)
	defer stop2()
	waitFor(t, "resync after restart", func() bool { return r.consecutive("geo") == 4 })
}

package sidecar_test

import (
	"context"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/sidecar"
	"github.com/minimesh/minimesh/xds"
)

// controlPlane is an in-process xDS server with geo's policy.
func controlPlane(t *testing.T, addr string, failures int) (*xds.Server, string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := xds.NewServer(ctx, nil)
	setGeo(t, s, failures)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go g.Serve(l)
	stop := func() { g.Stop(); cancel() }
	t.Cleanup(stop)
	return s, l.Addr().String(), stop
}

func setGeo(t *testing.T, s *xds.Server, failures int) {
	t.Helper()
	ps, err := policy.Decode("geo.yaml", []byte(proxytest.GeoPolicy(failures)))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		p.Metadata.Namespace = "default"
	}
	if err := s.SetNamespace("default", ps); err != nil {
		t.Fatal(err)
	}
}

type xdsConfig struct {
	debugConfig
	Source     string `json:"source"`
	XDSVersion string `json:"xdsVersion"`
}

func (r *running) xdsConfig(t *testing.T) xdsConfig {
	t.Helper()
	var c xdsConfig
	_, body := r.adminGet(t, "/debug/config")
	if err := jsonUnmarshal(body, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestXDSPolicies: the control plane's policy is in force from the start
// (the sidecar waits for it), a change applies without a restart, and
// with the control plane gone the last policy keeps serving.
func TestXDSPolicies(t *testing.T) {
	u := newUpstream(t)
	cp, addr, stop := controlPlane(t, "127.0.0.1:0", 3)
	dir, _ := policyDir(t, proxytest.GeoPolicy(7))
	r := start(t, sidecar.Config{XDSAddress: addr, PolicyDir: dir, Resolve: map[string]string{geo: u.Host()}})

	c := r.xdsConfig(t)
	if c.Source != "xds" || c.XDSVersion == "" || c.failures("geo-service") != 3 {
		t.Fatalf("at start: source %q version %q failures %d, want xds's 3", c.Source, c.XDSVersion, c.failures("geo-service"))
	}
	if n := r.failuresToOpen(t, u, 20); n != 3 {
		t.Fatalf("breaker opened after %d failures, want 3 (the control plane's)", n)
	}

	setGeo(t, cp, 4)
	if !proxytest.Poll(5*time.Second, 20*time.Millisecond, func() bool { return r.xdsConfig(t).failures("geo-service") == 4 }) {
		t.Fatal("the change did not reach the sidecar")
	}

	stop()
	time.Sleep(200 * time.Millisecond)
	if c := r.xdsConfig(t); c.Source != "xds" || c.failures("geo-service") != 4 {
		t.Fatalf("control plane gone: source %q failures %d, want the last xds policy", c.Source, c.failures("geo-service"))
	}
}

// TestXDSFallback: with no control plane answering in time the sidecar
// starts with its directory's policies, and the control plane's replace
// them once it answers.
func TestXDSFallback(t *testing.T) {
	u := newUpstream(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens yet
	dir, _ := policyDir(t, proxytest.GeoPolicy(7))
	r := start(t, sidecar.Config{XDSAddress: addr, XDSInitialTimeout: 300 * time.Millisecond, PolicyDir: dir, Resolve: map[string]string{geo: u.Host()}})
	if c := r.xdsConfig(t); c.Source != "dir" || c.failures("geo-service") != 7 {
		t.Fatalf("without a control plane: source %q failures %d, want the directory's 7", c.Source, c.failures("geo-service"))
	}
	controlPlane(t, addr, 2)
	if !proxytest.Poll(10*time.Second, 50*time.Millisecond, func() bool {
		c := r.xdsConfig(t)
		return c.Source == "xds" && c.failures("geo-service") == 2
	}) {
		t.Fatalf("the control plane's policy did not take over: %+v", r.xdsConfig(t))
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// nackingADS answers every request for clusters with geo's cluster
// twice, which the sidecar's decoder refuses before any Apply sees it.
type nackingADS struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	resp  *discovery.DiscoveryResponse
	nacks chan string
}

func (f *nackingADS) StreamAggregatedResources(st discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	for nonce := 0; ; nonce++ {
		req, err := st.Recv()
		if err != nil {
			return nil
		}
		if d := req.GetErrorDetail(); d != nil {
			select {
			case f.nacks <- d.GetMessage():
			default:
			}
		}
		if req.GetTypeUrl() != resourcev3.ClusterType || req.GetResponseNonce() != "" {
			continue
		}
		resp := proto.Clone(f.resp).(*discovery.DiscoveryResponse)
		resp.Nonce = strconv.Itoa(nonce)
		if err := st.Send(resp); err != nil {
			return nil
		}
	}
}

// TestXDSRefusalRecorded: a response the sidecar refuses in its decoder
// (a cluster name twice, from a control plane other than minimesh's
// own, which refuses such a set) is a failed load in
// minimesh_policy_reloads_total and /debug/config's lastError, as one
// its apply refuses is: it showed in the log alone.
func TestXDSRefusalRecorded(t *testing.T) {
	ps, err := policy.Decode("geo.yaml", []byte(proxytest.GeoPolicy(3)))
	if err != nil {
		t.Fatal(err)
	}
	clusters, _, _, err := xds.Resources(ps, "default")
	if err != nil {
		t.Fatal(err)
	}
	a, err := anypb.New(clusters[0].(proto.Message))
	if err != nil {
		t.Fatal(err)
	}
	f := &nackingADS{nacks: make(chan string, 1), resp: &discovery.DiscoveryResponse{
		TypeUrl: resourcev3.ClusterType, VersionInfo: "v1", Resources: []*anypb.Any{a, a}}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, f)
	go g.Serve(l)
	t.Cleanup(g.Stop)

	r := start(t, sidecar.Config{XDSAddress: l.Addr().String(), XDSInitialTimeout: 200 * time.Millisecond})
	select {
	case <-f.nacks:
	case <-time.After(10 * time.Second):
		t.Fatal("the sidecar never NACKed the cluster named twice")
	}
	var c xdsConfig
	if !proxytest.Poll(5*time.Second, 20*time.Millisecond, func() bool { c = r.xdsConfig(t); return c.LastError != "" }) {
		t.Fatalf("/debug/config after the NACK: no lastError (%+v)", c)
	}
	if !strings.Contains(c.LastError, "twice") {
		t.Errorf("lastError %q does not say what was refused", c.LastError)
	}
	if v, ok := r.metrics(t).Value("minimesh_policy_reloads_total", "result", "error"); !ok || v < 1 {
		t.Errorf("minimesh_policy_reloads_total{result=error} = %v, want at least 1", v)
	}
}

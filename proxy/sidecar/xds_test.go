package sidecar_test

import (
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"

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

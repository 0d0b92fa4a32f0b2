package controlplane_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/wellknown"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// sidecarEndpoints is a sidecar's endpoints as its xDS client hands them
// over: every set applied, in order.
type sidecarEndpoints struct {
	mu   sync.Mutex
	sets []map[string][]xdsclient.Endpoint
}

func (s *sidecarEndpoints) apply(eps map[string][]xdsclient.Endpoint, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sets = append(s.sets, eps)
	return nil
}

func (s *sidecarEndpoints) last() (map[string][]xdsclient.Endpoint, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sets) == 0 {
		return nil, 0
	}
	return s.sets[len(s.sets)-1], len(s.sets)
}

// waitEndpoints waits until the sidecar holds want for name and says how
// long that took.
func (s *sidecarEndpoints) wait(t testing.TB, name string, want []xdsclient.Endpoint) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		got, _ := s.last()
		if slices.Equal(got[name], want) {
			return time.Since(start)
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("%s: the sidecar holds %v, want %v", name, got[name], want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// edsClient is a sidecar's xDS client in this process, asking for
// endpoints too.
func edsClient(addr, pod, ns string, eps *sidecarEndpoints) *xdsclient.Client {
	return &xdsclient.Client{Addr: addr, Node: xdsclient.Node(pod, ns, "web"), Log: quietLog(),
		Apply:          func([]*policy.ResiliencePolicy, string) error { return nil },
		ApplyEndpoints: eps.apply, MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}
}

// watchSidecar runs a sidecar's xDS client in this process, asking for
// endpoints and ClusterIPs, until the test ends, and returns a wait for it
// to hold want as name's endpoints with the ClusterIP at named name.
func watchSidecar(ctx context.Context, t *testing.T, addr string, name string, at netip.AddrPort) func(why string, want []xdsclient.Endpoint) {
	eps := &sidecarEndpoints{}
	var mu sync.Mutex
	var ips map[netip.AddrPort]string
	c := edsClient(addr, "web-1", "checkout", eps)
	c.ApplyClusterIPs = func(m map[netip.AddrPort]string) {
		mu.Lock()
		defer mu.Unlock()
		ips = m
	}
	cctx, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	go c.Run(cctx)
	return func(why string, want []xdsclient.Endpoint) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got, _ := eps.last()
			e, served := got[name]
			mu.Lock()
			named := ips[at]
			mu.Unlock()
			if served && slices.Equal(e, want) && named == name {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the sidecar holds %v (served %v), %s named %q; want %v and the ClusterIP named %s", why, e, served, at, named, want, name)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

type pod struct {
	ip                          string
	zone                        string
	ready, serving, terminating bool
}

func endpointSlice(ns, svc, name string, ports map[string]int32, pods ...pod) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
		AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{},
	}
	for _, n := range slices.Sorted(maps.Keys(ports)) {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: new(n), Port: new(ports[n]), Protocol: new(corev1.ProtocolTCP)})
	}
	for _, p := range pods {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.ip}, Zone: new(p.zone),
			Conditions: discoveryv1.EndpointConditions{Ready: new(p.ready), Serving: new(p.serving), Terminating: new(p.terminating)}})
	}
	return s
}

func readyPod(ip string) pod { return pod{ip: ip, zone: "zone-a", ready: true, serving: true} }
func terminatingPod(ip string) pod {
	return pod{ip: ip, zone: "zone-a", serving: true, terminating: true}
}
func goingPod(ip string) pod    { return pod{ip: ip, zone: "zone-a", terminating: true} }
func startingPod(ip string) pod { return pod{ip: ip, zone: "zone-a"} }

func want(specs ...string) []xdsclient.Endpoint {
	var out []xdsclient.Endpoint
	for _, s := range specs {
		term := s[0] == '~'
		if term {
			s = s[1:]
		}
		out = append(out, xdsclient.Endpoint{Addr: netip.MustParseAddrPort(s), Terminating: term, Zone: "zone-a"})
	}
	return out
}

// TestEndpointsReachSidecar: a Service and its EndpointSlices written
// through the real API server reach a sidecar's xDS client through the
// built controller: ready, terminating and not-serving endpoints, two
// slices, two named ports; a change of a slice arrives; the controller
// gone, the client keeps its endpoints; a restarted controller does not
// make it drop them before it has read the Services, and then brings it
// up to date.
func TestEndpointsReachSidecar(t *testing.T) {
	p := startPlane(t)
	ctx := context.Background()
	cs := p.c.Client
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "geo"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "geo"},
		Ports: []corev1.ServicePort{{Name: "http", Port: 8000, Protocol: corev1.ProtocolTCP},
			{Name: "grpc", Port: 9000, Protocol: corev1.ProtocolTCP}},
	}}
	if _, err := cs.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ports := map[string]int32{"http": 8080, "grpc": 9090}
	sl := cs.DiscoveryV1().EndpointSlices("shop")
	for _, s := range []*discoveryv1.EndpointSlice{
		endpointSlice("shop", "geo", "geo-a", ports, readyPod("10.1.0.1"), terminatingPod("10.1.0.2"), goingPod("10.1.0.3"), startingPod("10.1.0.4")),
		endpointSlice("shop", "geo", "geo-b", ports, readyPod("10.1.0.5")),
	} {
		if _, err := sl.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	eps := &sidecarEndpoints{}
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	go edsClient(p.xdsAddr, "web-1", "checkout", eps).Run(cctx)
	http, grpc := wellknown.EndpointName("geo", "shop", 8000), wellknown.EndpointName("geo", "shop", 9000)
	eps.wait(t, http, want("10.1.0.1:8080", "~10.1.0.2:8080", "10.1.0.5:8080"))
	eps.wait(t, grpc, want("10.1.0.1:9090", "~10.1.0.2:9090", "10.1.0.5:9090"))

	// A rollout step: the terminating pod goes, the starting one is ready.
	start := time.Now()
	if _, err := sl.Update(ctx, endpointSlice("shop", "geo", "geo-a", ports, readyPod("10.1.0.1"), readyPod("10.1.0.4")), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eps.wait(t, http, want("10.1.0.1:8080", "10.1.0.4:8080", "10.1.0.5:8080"))
	t.Logf("slice update → sidecar: %v (debounce 100 ms included)", time.Since(start))

	// The controller goes: the sidecar keeps its endpoints.
	p.ctrl.Stop()
	_, applied := eps.last()
	time.Sleep(500 * time.Millisecond)
	eps.wait(t, http, want("10.1.0.1:8080", "10.1.0.4:8080", "10.1.0.5:8080"))
	// It changes meanwhile, and the controller comes back.
	if err := sl.Delete(ctx, "geo-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p.startController(t)
	eps.wait(t, http, want("10.1.0.1:8080", "10.1.0.4:8080"))
	eps.mu.Lock()
	for i, set := range eps.sets[applied:] {
		if _, ok := set[http]; !ok {
			t.Errorf("set %d after the restart has no %s: the restarted controller answered before it read the Services", applied+i, http)
		}
	}
	eps.mu.Unlock()
}

// TestFloodDoesNotFreezeEndpoints: a namespace writes, through the real
// API server, Services with more endpoints than a sidecar takes (5 ×
// 4,200, in slices of at most 1,000 as the EndpointSlice controller
// writes them); then a Deployment of shop rolls. The roll reaches a
// sidecar of another namespace, and the controller says which Service of
// which namespace it left out, in its log and /metrics. Before, the
// controller refused the whole set and kept the last one for every
// Service: the sidecar kept shop's dead pod.
func TestFloodDoesNotFreezeEndpoints(t *testing.T) {
	p := startPlane(t)
	ctx := context.Background()
	cs := p.c.Client
	p.c.CreateNamespace(t, "flood", nil)
	svc := func(ns, name string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name}, Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
	}
	ports := map[string]int32{"http": 8080}
	if _, err := cs.CoreV1().Services("shop").Create(ctx, svc("shop", "geo"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices("shop").Create(ctx, endpointSlice("shop", "geo", "geo-a", ports, readyPod("10.1.0.1")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eps := &sidecarEndpoints{}
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	go edsClient(p.xdsAddr, "web-1", "checkout", eps).Run(cctx)
	geo := wellknown.EndpointName("geo", "shop", 80)
	eps.wait(t, geo, want("10.1.0.1:8080"))

	for i := range 5 {
		name := fmt.Sprintf("big-%d", i)
		if _, err := cs.CoreV1().Services("flood").Create(ctx, svc("flood", name), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for j := range 5 {
			var pods []pod
			for k := range min(1000, 4200-j*1000) {
				n := j*1000 + k
				pods = append(pods, readyPod(fmt.Sprintf("10.%d.%d.%d", 10+i, n/256, n%256)))
			}
			if _, err := cs.DiscoveryV1().EndpointSlices("flood").Create(ctx, endpointSlice("flood", name, fmt.Sprintf("%s-%d", name, j), ports, pods...), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The flood is in the set (but for what is left out) before shop rolls.
	waitEndpoints(t, eps, func(got map[string][]xdsclient.Endpoint) bool {
		n := 0
		for _, e := range got {
			n += len(e)
		}
		return n == 4*4200+1
	})
	start := time.Now()
	if _, err := cs.DiscoveryV1().EndpointSlices("shop").Update(ctx, endpointSlice("shop", "geo", "geo-a", ports, readyPod("10.1.0.2")), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eps.wait(t, geo, want("10.1.0.2:8080"))
	t.Logf("shop's roll → sidecar with flood over the bound: %v", time.Since(start))

	out := p.ctrl.Output()
	if !strings.Contains(out, "Services left out") || !strings.Contains(out, "flood/big-0 (4200 endpoints") || !strings.Contains(out, "flood (1 Services, 4200 endpoints)") {
		t.Errorf("the controller's log does not name what it left out:\n%s", out)
	}
	admin := ""
	for i, a := range p.ctrlArgs {
		if a == "--admin-addr" {
			admin = "http://" + p.ctrlArgs[i+1]
		}
	}
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range []string{`minimesh_eds_services_left_out{namespace="flood",reason="cluster-total"} 1`, "minimesh_eds_endpoints 16801", "minimesh_eds_endpoints_left_out 4200"} {
		if !strings.Contains(string(body), line+"\n") {
			t.Errorf("/metrics has no %q", line)
		}
	}
}

// waitEndpoints waits until the sidecar's last set satisfies ok.
func waitEndpoints(t testing.TB, s *sidecarEndpoints, ok func(map[string][]xdsclient.Endpoint) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, _ := s.last()
		if ok(got) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar's set never came: %d Service ports", len(got))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

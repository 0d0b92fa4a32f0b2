package endpointctl

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/minimesh/minimesh/wellknown"
	"github.com/minimesh/minimesh/xds"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

type sink struct {
	mu   sync.Mutex
	sets []map[string][]xdsclient.Endpoint
	ips  []map[string][]netip.AddrPort // clusterIPs of each set
	at   []time.Time                   // when each set came (the bubble's clock under synctest)
}

func (s *sink) SetServices(eps map[string][]xdsclient.Endpoint, clusterIPs map[string][]netip.AddrPort) (xds.EndpointsServed, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sets = append(s.sets, eps)
	s.ips = append(s.ips, clusterIPs)
	s.at = append(s.at, time.Now())
	return xds.EndpointsServed{ServicePorts: len(eps)}, nil
}

// since is every publish from the n-th on: each one's set and time.
func (s *sink) since(n int) ([]map[string][]xdsclient.Endpoint, []time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sets[n:]), slices.Clone(s.at[n:])
}

func (s *sink) last() (map[string][]xdsclient.Endpoint, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sets) == 0 {
		return nil, 0
	}
	return s.sets[len(s.sets)-1], len(s.sets)
}

// holds says whether the sink's last set serves name with want (nil:
// served with no endpoints) and names it at exactly the ClusterIPs vips.
func (s *sink) holds(name string, want []xdsclient.Endpoint, vips ...netip.AddrPort) func() bool {
	return func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.sets) == 0 {
			return false
		}
		got, ok := s.sets[len(s.sets)-1][name]
		return ok && slices.Equal(got, want) && slices.Equal(s.ips[len(s.ips)-1][name], vips)
	}
}

func service(ns, name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: ports}}
}

type epSpec struct {
	ip                          string
	ready, serving, terminating *bool
}

func slice(ns, svc, name string, typ discoveryv1.AddressType, ports map[string]int32, eps ...epSpec) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		Labels: map[string]string{discoveryv1.LabelServiceName: svc}}, AddressType: typ}
	for n, p := range ports {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: new(n), Port: new(p)})
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{e.ip}, Zone: new("z"),
			Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating}})
	}
	return s
}

var yes, no = new(true), new(false)

func ready(ip string) epSpec       { return epSpec{ip: ip, ready: yes, serving: yes, terminating: no} }
func terminating(ip string) epSpec { return epSpec{ip: ip, ready: no, serving: yes, terminating: yes} }
func notServing(ip string) epSpec  { return epSpec{ip: ip, ready: no, serving: no, terminating: yes} }
func starting(ip string) epSpec    { return epSpec{ip: ip, ready: no, serving: no, terminating: no} }

func eps(t *testing.T, spec ...string) []xdsclient.Endpoint {
	t.Helper()
	var out []xdsclient.Endpoint
	for _, s := range spec {
		term := s[0] == '~'
		if term {
			s = s[1:]
		}
		out = append(out, xdsclient.Endpoint{Addr: netip.MustParseAddrPort(s), Terminating: term, Zone: "z"})
	}
	return out
}

func TestEndpoints(t *testing.T) {
	svc := service("shop", "geo", corev1.ServicePort{Name: "http", Port: 80}, corev1.ServicePort{Name: "grpc", Port: 9000},
		corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	got := Endpoints(svc, []any{
		slice("shop", "geo", "a", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080, "grpc": 9090},
			ready("10.0.0.2"), terminating("10.0.0.1"), notServing("10.0.0.3"), starting("10.0.0.4"),
			epSpec{ip: "10.0.0.5"}), // no conditions: ready
		slice("shop", "geo", "b", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080, "grpc": 9090},
			ready("10.0.0.1"), ready("10.0.0.6")), // 10.0.0.1 twice: ready wins
		// Not the Service's family (IPv4: it has IPv4 slices and no
		// ipFamilies), and not an address: TestEndpointsOneFamily.
		slice("shop", "geo", "c", discoveryv1.AddressTypeIPv6, map[string]int32{"http": 8080}, ready("fd00::1")),
		slice("shop", "geo", "d", discoveryv1.AddressTypeFQDN, map[string]int32{"http": 8080}, ready("geo.example.com")),
	})
	want := map[int32][]xdsclient.Endpoint{
		80:   eps(t, "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.5:8080", "10.0.0.6:8080"),
		9000: eps(t, "10.0.0.1:9090", "10.0.0.2:9090", "10.0.0.5:9090", "10.0.0.6:9090"),
	}
	if len(got) != len(want) {
		t.Fatalf("ports %v", got)
	}
	for p, w := range want {
		if !slices.Equal(got[p], w) {
			t.Errorf("port %d: %v\nwant %v", p, got[p], w)
		}
	}
	// Only terminating ones left.
	got = Endpoints(svc, []any{slice("shop", "geo", "a", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, terminating("10.0.0.1"))})
	if w := eps(t, "~10.0.0.1:8080"); !slices.Equal(got[80], w) {
		t.Errorf("terminating: %v, want %v", got[80], w)
	}
	// An unnamed single port.
	one := service("shop", "one", corev1.ServicePort{Port: 8000})
	got = Endpoints(one, []any{slice("shop", "one", "a", discoveryv1.AddressTypeIPv4, map[string]int32{"": 80}, ready("10.0.0.9"))})
	if w := eps(t, "10.0.0.9:80"); !slices.Equal(got[8000], w) {
		t.Errorf("unnamed port: %v", got)
	}
}

// TestController: the first set comes after the sync with what is there;
// changes are gathered for one Debounce from the first of them, so a
// burst is one publish and a long roll at most one per Debounce; a
// deleted Service goes. In a synctest bubble: the coalescing bound is
// about time, and on the bubble's clock it is exact whatever the load
// (on the wall clock, a slow burst legitimately made more publishes than
// a fixed cap allowed).
func TestController(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cs := fake.NewClientset(
			service("shop", "geo", corev1.ServicePort{Name: "http", Port: 80}),
			slice("shop", "geo", "geo-1", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, ready("10.0.0.1")),
			service("shop", "empty", corev1.ServicePort{Port: 80}),
		)
		const debounce = 50 * time.Millisecond
		s := &sink{}
		c := &Controller{Client: cs, Sink: s, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Debounce: debounce}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go c.Run(ctx)
		for !c.Synced() {
			time.Sleep(10 * time.Millisecond)
		}
		synctest.Wait()
		geo, empty := wellknown.EndpointName("geo", "shop", 80), wellknown.EndpointName("empty", "shop", 80)
		if got, n := s.last(); n != 1 || len(got) != 2 || len(got[geo]) != 1 || !hasKey(got, empty) {
			t.Fatalf("%d sets, the last %v: want one, geo's endpoint, and empty with no endpoints", n, got)
		}
		// The sync's own events leave a wake-up behind (see below): let it
		// pass before the burst.
		time.Sleep(2 * debounce)
		synctest.Wait()

		sl := cs.DiscoveryV1().EndpointSlices("shop")
		update := func(i int) {
			t.Helper()
			obj := slice("shop", "geo", "geo-1", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, ready(fmt.Sprintf("10.0.1.%d", i)))
			if _, err := sl.Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		published := func(i int) []xdsclient.Endpoint { return eps(t, fmt.Sprintf("10.0.1.%d:8080", i)) }

		// A burst of 50 updates at one instant is one publish, one
		// Debounce later, with the last of them.
		_, before := s.last()
		burst := time.Now()
		for i := range 50 {
			update(i)
		}
		time.Sleep(3 * debounce)
		synctest.Wait()
		sets, at := s.since(before)
		if len(sets) == 0 || !at[0].Equal(burst.Add(debounce)) || !slices.Equal(sets[0][geo], published(49)) {
			t.Fatalf("after a burst of 50 updates, %d publishes at %v: want the first %v later with the last update", len(sets), offsets(at, burst), debounce)
		}
		// A change of the burst can leave the controller woken once more
		// (its wake-up is a one-slot channel); that publish has nothing
		// new, and the server pushes a sidecar only what changed.
		if len(sets) > 2 || len(sets) == 2 && (!at[1].Equal(burst.Add(2*debounce)) || !slices.Equal(sets[1][geo], published(49))) {
			t.Errorf("after a burst of 50 updates, %d publishes at %v (%v): want one, and at most one more with the same set", len(sets), offsets(at, burst), sets)
		}

		// A roll of 50 updates 7 ms apart (343 ms) is gathered from its
		// first change, not its last: a publish every Debounce, each with
		// the updates made before it, never two in one Debounce.
		_, before = s.last()
		roll := time.Now()
		const every = 7 * time.Millisecond
		for i := range 50 {
			if i > 0 {
				time.Sleep(every)
			}
			update(100 + i)
		}
		time.Sleep(3 * debounce)
		synctest.Wait()
		span := 49 * every
		sets, at = s.since(before)
		if bound := int(span/debounce) + 2; len(sets) > bound || len(sets) < int(span/debounce)+1 {
			t.Errorf("a roll of 50 updates over %v made %d publishes at %v: want one per %v, %d at most", span, len(sets), offsets(at, roll), debounce, bound)
		}
		for k := range sets {
			if want := roll.Add(time.Duration(k+1) * debounce); !at[k].Equal(want) {
				t.Errorf("publish %d of the roll at %v, want %v", k+1, at[k].Sub(roll), want.Sub(roll))
			}
			last := min(49, int(at[k].Sub(roll)/every)) // the latest update made before it
			if !slices.Equal(sets[k][geo], published(100+last)) {
				t.Errorf("publish %d of the roll, at %v, holds %v; want update %d's", k+1, at[k].Sub(roll), sets[k][geo], last)
			}
		}

		// A second slice, then the Service deleted.
		if _, err := sl.Create(ctx, slice("shop", "geo", "geo-2", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, terminating("10.0.2.1")), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(debounce)
		synctest.Wait()
		if got, _ := s.last(); len(got[geo]) != 2 {
			t.Fatalf("%v after a second slice: want two endpoints", got[geo])
		}
		if err := cs.CoreV1().Services("shop").Delete(ctx, "geo", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(debounce)
		synctest.Wait()
		if got, _ := s.last(); hasKey(got, geo) {
			t.Fatalf("the deleted Service still served: %v", got)
		}
		cancel()
		synctest.Wait()
	})
}

// offsets are times as durations since t0, for a message.
func offsets(at []time.Time, t0 time.Time) []time.Duration {
	var out []time.Duration
	for _, a := range at {
		out = append(out, a.Sub(t0))
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func hasKey(m map[string][]xdsclient.Endpoint, k string) bool { _, ok := m[k]; return ok }

// BenchmarkEndpoints is the recompute of one Service of 100 endpoints in
// two slices: what a slice change costs the controller, against the
// Service count times it if every change recomputed every Service.
func BenchmarkEndpoints(b *testing.B) {
	svc := service("shop", "geo", corev1.ServicePort{Name: "http", Port: 80})
	var a, c []epSpec
	for i := range 50 {
		a = append(a, ready(fmt.Sprintf("10.0.0.%d", i+1)))
		c = append(c, ready(fmt.Sprintf("10.0.1.%d", i+1)))
	}
	slcs := []any{
		slice("shop", "geo", "a", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, a...),
		slice("shop", "geo", "b", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, c...),
	}
	for b.Loop() {
		if len(Endpoints(svc, slcs)[80]) != 100 {
			b.Fatal("want 100")
		}
	}
}

// refusing is a sink that refuses more than one Service port: a server
// that fails to take a set. refused counts its refusals.
type refusing struct {
	sink
	refused atomic.Int32
}

func (r *refusing) SetServices(eps map[string][]xdsclient.Endpoint, clusterIPs map[string][]netip.AddrPort) (xds.EndpointsServed, error) {
	if len(eps) > 1 {
		r.refused.Add(1)
		return xds.EndpointsServed{}, fmt.Errorf("%d: too many", len(eps))
	}
	return r.sink.SetServices(eps, clusterIPs)
}

// TestRefusedFromTheStart: a set the sink refuses at the first publish
// is replaced by none, so that a server waiting for endpoints serves the
// policies; a later refusal keeps the last set.
func TestRefusedFromTheStart(t *testing.T) {
	cs := fake.NewClientset(
		service("shop", "a", corev1.ServicePort{Port: 80}),
		service("shop", "b", corev1.ServicePort{Port: 80}),
	)
	s := &refusing{}
	c := &Controller{Client: cs, Sink: s, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Debounce: 10 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	waitFor(t, "the first publish", c.Synced)
	if got, n := s.last(); n != 1 || len(got) != 0 {
		t.Fatalf("after a refused first set: %d sets, the last %v; want one, empty", n, got)
	}
	if err := cs.CoreV1().Services("shop").Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a set under the bound", func() bool { got, _ := s.last(); return len(got) == 1 })
	before := s.refused.Load()
	if _, err := cs.CoreV1().Services("shop").Create(ctx, service("shop", "c", corev1.ServicePort{Port: 80}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The set with c is published, and refused: only then is "the last
	// set kept" a fact, not a publish that has not come yet.
	waitFor(t, "the refusal of the set with c", func() bool { return s.refused.Load() > before })
	if got, _ := s.last(); len(got) != 1 {
		t.Fatalf("a later refusal replaced the last set with %v", got)
	}
}

// serverSink is the real xDS server as the controller's sink, with what
// each publish handed it and what it served.
type serverSink struct {
	srv *xds.Server
	mu  sync.Mutex
	in  map[string][]xdsclient.Endpoint
	out xds.EndpointsServed
	err error
}

func (s *serverSink) SetServices(eps map[string][]xdsclient.Endpoint, clusterIPs map[string][]netip.AddrPort) (xds.EndpointsServed, error) {
	served, err := s.srv.SetServices(eps, clusterIPs)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.in, s.out, s.err = eps, served, err
	return served, err
}

// geoServed says whether the last publish served shop's geo with want.
func (s *serverSink) geoServed(want []xdsclient.Endpoint) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := wellknown.EndpointName("geo", "shop", 80)
	if s.err != nil || !slices.Equal(s.in[name], want) {
		return false
	}
	for _, l := range s.out.LeftOut {
		if l.Namespace == "shop" {
			return false
		}
	}
	return true
}

// runController runs a Controller of cs that publishes to s and logs to
// w, with a debounce short enough for a test, until the test ends; the
// context is the one it runs with.
func runController(t *testing.T, cs kubernetes.Interface, s Sink, w io.Writer) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c := &Controller{Client: cs, Sink: s, Log: slog.New(slog.NewTextHandler(w, nil)), Debounce: 10 * time.Millisecond}
	go c.Run(ctx)
	return ctx
}

// syncLog is a log buffer the controller writes while the test reads.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestFloodLeavesOthersFlowing: a namespace writes Services with more
// endpoints than a sidecar takes (5 × 4,200, in slices of at most 1,000
// as the EndpointSlice controller writes them); a Deployment of shop
// then rolls. The roll reaches the server's set (before, the whole set
// was refused and the last one kept for every Service: sidecars went on
// calling shop's dead pod), and the operator is told which Services of
// which namespace are left out, in the log and the metrics.
func TestFloodLeavesOthersFlowing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		objs := []runtime.Object{
			service("shop", "geo", corev1.ServicePort{Name: "http", Port: 80}),
			slice("shop", "geo", "geo-1", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, ready("10.0.0.1")),
		}
		for i := range 5 {
			name := fmt.Sprintf("big-%d", i)
			objs = append(objs, service("flood", name, corev1.ServicePort{Name: "http", Port: 80}))
			for j := range 5 {
				var list []epSpec
				for k := range min(1000, 4200-j*1000) {
					list = append(list, ready(fmt.Sprintf("10.%d.%d.%d", i+1, (j*1000+k)/256, (j*1000+k)%256)))
				}
				objs = append(objs, slice("flood", name, fmt.Sprintf("%s-%d", name, j), discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, list...))
			}
		}
		cs := fake.NewClientset(objs...)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		s := &serverSink{srv: xds.NewServer(ctx, nil)}
		reg := prometheus.NewRegistry()
		var logs syncLog
		c := &Controller{Client: cs, Sink: s, Log: slog.New(slog.NewJSONHandler(&logs, nil)), Metrics: reg}
		go c.Run(ctx)
		for !c.Synced() {
			time.Sleep(10 * time.Millisecond)
		}
		if !s.geoServed(eps(t, "10.0.0.1:8080")) {
			t.Fatalf("first set: shop's geo not served (%v)", s.err)
		}
		// shop's Deployment rolls: its pod is replaced.
		roll := slice("shop", "geo", "geo-1", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, ready("10.0.0.2"))
		if _, err := cs.DiscoveryV1().EndpointSlices("shop").Update(ctx, roll, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // ten debounce intervals
		synctest.Wait()
		if !s.geoServed(eps(t, "10.0.0.2:8080")) {
			t.Fatalf("after the roll: shop's geo is not its new pod (%v): one namespace froze every other's endpoints", s.err)
		}
		out := logs.String()
		if !strings.Contains(out, `"services_left_out":1`) || !strings.Contains(out, "flood/big-0 (4200 endpoints") ||
			!strings.Contains(out, "flood (1 Services, 4200 endpoints)") || strings.Count(out, "Services left out") != 1 {
			t.Errorf("the log does not name the Service left out once:\n%s", out)
		}
		if got := testutil.ToFloat64(c.metrics.servicesLeftOut.WithLabelValues("flood", xds.ReasonTotal)); got != 1 {
			t.Errorf("minimesh_eds_services_left_out{flood, cluster-total} = %v, want 1", got)
		}
		if got := testutil.ToFloat64(c.metrics.endpoints); got != 16801 {
			t.Errorf("minimesh_eds_endpoints = %v, want 16,801", got)
		}
		if n, err := testutil.GatherAndCount(reg, "minimesh_eds_services_left_out", "minimesh_eds_endpoints_left_out"); err != nil || n != 2 {
			t.Errorf("registered: %d series, %v", n, err)
		}
		cancel()
		synctest.Wait()
	})
}

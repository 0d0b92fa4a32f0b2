package policyctl

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	discoveryfake "k8s.io/client-go/discovery/fake"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// tooLong is a spec.service the CRD's schema lets through and the
// decoder refuses: a DNS label of 64 characters.
var tooLong = strings.Repeat("g", 64)

// edit changes an object as kubectl edit would (get, change, update).
func edit(t *testing.T, c *dynamicfake.FakeDynamicClient, ns, name string, change func(u *unstructured.Unstructured)) *unstructured.Unstructured {
	t.Helper()
	ctx := context.Background()
	u, err := c.Resource(GVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	change(u)
	u, err = c.Resource(GVR).Namespace(ns).Update(ctx, u, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// stored is the object as the API server holds it.
func stored(t *testing.T, c *dynamicfake.FakeDynamicClient, ns, name string) *unstructured.Unstructured {
	t.Helper()
	u, err := c.Resource(GVR).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// acceptedOf is the object's Accepted condition (nil if none).
func acceptedOf(u *unstructured.Unstructured) map[string]any {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, x := range conds {
		if m, _ := x.(map[string]any); m["type"] == "Accepted" {
			return m
		}
	}
	return nil
}

// served is the policy of namespace ns named name that s serves (nil if
// none).
func (s *setSink) served(ns, name string) *policy.ResiliencePolicy {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.byNS[ns] {
		if p.Metadata.Name == name {
			return p
		}
	}
	return nil
}

func (s *setSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sets
}

// start runs ctl until the test ends, or until the returned stop.
func start(t *testing.T, ctl *Controller) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ctl.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// TestLastValidSurvivesRestart: a policy whose object turned invalid
// keeps serving its last valid version after the controller restarts
// (helm upgrade restarts it), as docs/controlplane.md promises. Before,
// that version was held in the process only, and the new process served
// nothing for the policy: every sidecar dropped it.
func TestLastValidSurvivesRestart(t *testing.T) {
	c := fakeClient(object("shop", "geo", time.Now(), map[string]any{"service": "geo", "timeout": "2s"}))
	s1 := &setSink{}
	stop := start(t, &Controller{Client: c, Sink: s1, GlobalNamespace: "minimesh", Log: quiet()})
	waitFor(t, "geo served", func() bool { return s1.served("shop", "geo") != nil })
	edit(t, c, "shop", "geo", func(u *unstructured.Unstructured) {
		_ = unstructured.SetNestedField(u.Object, tooLong, "spec", "service")
	})
	// What a restart finds: the status of generation 2, written.
	waitFor(t, "the status of generation 2", func() bool {
		m := acceptedOf(stored(t, c, "shop", "geo"))
		return m != nil && m["observedGeneration"] == int64(2)
	})
	if p := s1.served("shop", "geo"); p == nil || p.Spec.Timeout != 2*time.Second {
		t.Fatalf("before the restart shop/geo serves %+v, want generation 1 (timeout 2s)", p)
	}
	stop()

	s2 := &setSink{}
	start(t, &Controller{Client: c, Sink: s2, GlobalNamespace: "minimesh", Log: quiet()})
	waitFor(t, "a publish after the restart", func() bool { return s2.count() >= 1 })
	if p := s2.served("shop", "geo"); p == nil || p.Spec.Timeout != 2*time.Second || p.Spec.Service != "geo" {
		t.Fatalf("after a controller restart shop/geo serves %+v, want its last valid version (generation 1, timeout 2s): every sidecar drops it", p)
	}
	u := stored(t, c, "shop", "geo")
	if m := acceptedOf(u); m["status"] != "False" || !strings.Contains(m["message"].(string), "the last valid version keeps serving: generation 1") {
		t.Errorf("status after the restart: %v", m)
	}
	if g, _, _ := unstructured.NestedInt64(u.Object, "status", "lastValidGeneration"); g != 1 {
		t.Errorf("status.lastValidGeneration %d, want 1", g)
	}
}

// TestReplicasAgreeOnLastValid: the chart's two controller replicas, one
// started before a policy's object turned invalid and one after, serve
// the same (its last valid version) and agree on its status, which then
// stays as it is. Before, the later replica served nothing, and the two
// rewrote the status at each other without end (each one's message
// differed, and each write is the other's informer event: 12,395 writes
// in 3 s). With a CRD from before status.lastValidSpec (Helm never
// upgrades a CRD), which drops it, they agree on serving nothing, and do
// not write either.
func TestReplicasAgreeOnLastValid(t *testing.T) {
	for _, tc := range []struct {
		name   string
		prune  bool   // the CRD drops status.lastValidSpec
		served bool   // geo's last valid version is served
		msg    string // in the Accepted message
	}{
		{"the CRD records the last valid version", false, true, "the last valid version keeps serving: generation 1"},
		{"a CRD from before lastValidSpec", true, false, "no valid version of it was recorded: nothing is served for it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Now()
			c := newFakeClient(tc.prune,
				object("shop", "geo", now, map[string]any{"service": "geo", "timeout": "2s"}),
				object("shop", "pay", now.Add(time.Second), map[string]any{"service": "pay"})) // valid throughout
			// touched[i]: the touched label of geo in the last whole
			// sync (status writes included) replica i ran.
			var touched [2]atomic.Int64
			replica := func(i int, s *setSink) *Controller {
				return &Controller{Client: c, Sink: s, GlobalNamespace: "minimesh", Log: quiet(), synced: func(objs []any) {
					for _, o := range objs {
						if u := o.(*unstructured.Unstructured); u.GetName() == "geo" {
							n, _ := strconv.ParseInt(u.GetLabels()["touched"], 10, 64)
							touched[i].Store(n)
						}
					}
				}}
			}
			sa, sb := &setSink{}, &setSink{}
			start(t, replica(0, sa))
			waitFor(t, "replica A serves geo", func() bool { return sa.served("shop", "geo") != nil })
			edit(t, c, "shop", "geo", func(u *unstructured.Unstructured) {
				_ = unstructured.SetNestedField(u.Object, tooLong, "spec", "service")
			})
			start(t, replica(1, sb))

			agree := func() bool {
				a, b := sa.served("shop", "geo"), sb.served("shop", "geo")
				if tc.served != (a != nil) || tc.served != (b != nil) {
					return false
				}
				m := acceptedOf(stored(t, c, "shop", "geo"))
				return m != nil && m["observedGeneration"] == int64(2) && strings.Contains(m["message"].(string), tc.msg)
			}
			deadline := time.Now().Add(30 * time.Second)
			for !agree() {
				if time.Now().After(deadline) {
					t.Fatalf("the replicas do not agree: A serves %v, B serves %v; status %v",
						sa.served("shop", "geo"), sb.served("shop", "geo"), acceptedOf(stored(t, c, "shop", "geo")))
				}
				time.Sleep(10 * time.Millisecond)
			}
			if a, b := sa.served("shop", "geo"), sb.served("shop", "geo"); tc.served && (a.Spec.Timeout != 2*time.Second || b.Spec.Timeout != 2*time.Second) {
				t.Fatalf("A serves %+v, B %+v: want generation 1 (timeout 2s) from both", a.Spec, b.Spec)
			}

			// Both replicas hear of a change (a label: no new
			// generation) and sync, twice: after the first, neither
			// writes a status again.
			touch := func(n int64) (geoRV, payRV string) {
				t.Helper()
				geoRV = edit(t, c, "shop", "geo", func(u *unstructured.Unstructured) {
					u.SetLabels(map[string]string{"touched": strconv.FormatInt(n, 10)})
				}).GetResourceVersion()
				waitFor(t, "both replicas synced the labelled object", func() bool { return touched[0].Load() == n && touched[1].Load() == n })
				return geoRV, stored(t, c, "shop", "pay").GetResourceVersion()
			}
			_, payRV := touch(1)
			geoRV, _ := touch(2)
			for name, rv := range map[string]string{"geo": geoRV, "pay": payRV} {
				if u := stored(t, c, "shop", name); u.GetResourceVersion() != rv {
					t.Errorf("a replica rewrote the status of %s, which both agreed on (resourceVersion %s, want %s): %v",
						name, u.GetResourceVersion(), rv, acceptedOf(u))
				}
			}
		})
	}
}

// TestLastValidFromStatusIsValidated: status.lastValidSpec is served for
// an invalid object only once validated again as a spec is, and only
// from one of the object's past generations: a status can be written by
// hand (through the status subresource), and the decoder can have grown
// stricter since it was recorded.
func TestLastValidFromStatusIsValidated(t *testing.T) {
	good := map[string]any{"service": "geo", "timeout": "2s"}
	for _, tc := range []struct {
		name   string
		status map[string]any
		served bool
		msg    string
	}{
		{"valid", map[string]any{"lastValidSpec": good, "lastValidGeneration": int64(1)},
			true, "the last valid version keeps serving: generation 1"},
		{"refused by the decoder", map[string]any{"lastValidSpec": map[string]any{"service": tooLong}, "lastValidGeneration": int64(1)},
			false, "in status.lastValidSpec, is refused too"},
		{"unknown field", map[string]any{"lastValidSpec": map[string]any{"service": "geo", "retry": map[string]any{"attempts": int64(3)}}, "lastValidGeneration": int64(1)},
			false, "in status.lastValidSpec, is refused too"},
		{"from a later generation", map[string]any{"lastValidSpec": good, "lastValidGeneration": int64(3)},
			false, "status.lastValidGeneration 3 is not a generation of this object"},
		{"without a generation", map[string]any{"lastValidSpec": good},
			false, "is not a generation of this object"},
		{"none", nil, false, "no valid version of it was recorded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := object("shop", "geo", time.Now(), map[string]any{"service": tooLong, "timeout": "1s"})
			u.SetGeneration(2)
			if tc.status != nil {
				u.Object["status"] = tc.status
			}
			c := fakeClient(u, object("shop", "pay", time.Now(), map[string]any{"service": "pay"}))
			s := &setSink{}
			start(t, &Controller{Client: c, Sink: s, GlobalNamespace: "minimesh", Log: quiet()})
			waitFor(t, "a publish", func() bool { return s.served("shop", "pay") != nil })
			if p := s.served("shop", "geo"); (p != nil) != tc.served || p != nil && p.Spec.Timeout != 2*time.Second {
				t.Errorf("shop/geo serves %+v, want served: %v", p, tc.served)
			}
			waitFor(t, "geo's status", func() bool { return acceptedOf(stored(t, c, "shop", "geo")) != nil })
			if m := acceptedOf(stored(t, c, "shop", "geo")); m["status"] != "False" || !strings.Contains(m["message"].(string), tc.msg) {
				t.Errorf("Accepted %v, want False with %q", m, tc.msg)
			}
		})
	}
}

// crdDiscovery is discovery whose CRD can be installed mid-test (the
// fake's Resources cannot be written while it is read) and whose API
// server can fail.
type crdDiscovery struct {
	*discoveryfake.FakeDiscovery
	installed atomic.Bool
	down      atomic.Bool
	asked     atomic.Int32
}

func (d *crdDiscovery) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	d.asked.Add(1)
	switch {
	case d.down.Load():
		return nil, errors.New("dial tcp 10.96.0.1:443: connect: connection refused")
	case d.installed.Load():
		return &metav1.APIResourceList{GroupVersion: gv, APIResources: []metav1.APIResource{{Name: GVR.Resource, Namespaced: true, Kind: policy.Kind}}}, nil
	}
	return d.FakeDiscovery.ServerResourcesForGroupVersion(gv) // NotFound, as the API server answers
}

// tee sets both sinks.
type tee [2]Sink

func (t tee) Set(global []*policy.ResiliencePolicy, byNS map[string][]*policy.ResiliencePolicy) error {
	return errors.Join(t[0].Set(global, byNS), t[1].Set(global, byNS))
}

// TestNoCRDServesEmpty: without the CRD there is no policy, a known
// empty set: the controller publishes it before it says it is ready, a
// sidecar is answered at once (with the endpoints), and the CRD once
// installed is watched. Before, the controller said ready and published
// nothing, and the xDS server answered no sidecar at all: each waited
// out --xds-initial-timeout and got no endpoints either. An API server
// that does not answer is another matter: the policies are not known,
// and publishing none would make every sidecar drop its own.
func TestNoCRDServesEmpty(t *testing.T) {
	t.Run("no CRD", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		srv := xds.NewServer(ctx, nil)
		srv.ExpectEndpoints()
		if _, err := srv.SetEndpoints(map[string][]xdsclient.Endpoint{}); err != nil {
			t.Fatal(err)
		}
		disc := &crdDiscovery{FakeDiscovery: &discoveryfake.FakeDiscovery{Fake: &k8stesting.Fake{}}}
		rec := &setSink{}
		c := fakeClient(object("shop", "geo", time.Now(), map[string]any{"service": "geo", "timeout": "2s"}))
		ctl := &Controller{Client: c, Discovery: disc, Sink: tee{rec, srv}, GlobalNamespace: "minimesh", Log: quiet(), crdPoll: 20 * time.Millisecond}
		start(t, ctl)
		waitFor(t, "ready", ctl.Synced)
		if rec.count() != 1 || rec.names("") != nil || rec.names("shop") != nil {
			t.Fatalf("ready without the CRD after %d publishes (global %v, shop %v), want one of nothing", rec.count(), rec.names(""), rec.names("shop"))
		}

		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer()
		srv.Register(g)
		go g.Serve(l)
		defer g.Stop()
		var mu sync.Mutex
		applied := -1 // policies in the sidecar's last answer
		sc := &xdsclient.Client{Addr: l.Addr().String(), Node: xdsclient.Node("web-1", "shop", "web"), Log: quiet(),
			Apply: func(p []*policy.ResiliencePolicy, _ string) error {
				mu.Lock()
				applied = len(p)
				mu.Unlock()
				return nil
			},
			ApplyEndpoints: func(map[string][]xdsclient.Endpoint, string) error { return nil }}
		go sc.Run(ctx)
		last := func() int { mu.Lock(); defer mu.Unlock(); return applied }
		deadline := time.Now().Add(30 * time.Second)
		for last() != 0 {
			if time.Now().After(deadline) {
				t.Fatal("the controller is ready (Synced) but a sidecar got no answer in 30 s (no policies, no endpoints)")
			}
			time.Sleep(10 * time.Millisecond)
		}

		disc.installed.Store(true)
		waitFor(t, "the sidecar given shop/geo once the CRD is installed", func() bool { return last() == 1 })
	})

	t.Run("API server unreachable", func(t *testing.T) {
		disc := &crdDiscovery{FakeDiscovery: &discoveryfake.FakeDiscovery{Fake: &k8stesting.Fake{}}}
		disc.down.Store(true)
		s := &setSink{}
		ctl := &Controller{Client: fakeClient(), Discovery: disc, Sink: s, GlobalNamespace: "minimesh", Log: quiet(), crdPoll: 5 * time.Millisecond}
		start(t, ctl)
		waitFor(t, "three discovery attempts", func() bool { return disc.asked.Load() >= 3 })
		if ctl.Synced() || s.count() != 0 {
			t.Fatalf("API server unreachable: Synced %v after %d publishes; want not ready, nothing published", ctl.Synced(), s.count())
		}
		disc.down.Store(false)
		waitFor(t, "ready once it answers (no CRD)", ctl.Synced)
		if s.count() != 1 {
			t.Fatalf("%d publishes, want one of nothing", s.count())
		}
	})
}

package policyctl

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/minimesh/minimesh/policy"
)

// statusGate is a dynamic client whose status writes first go through
// hold, outside the fake's lock (a reactor runs under it, and one that
// waited would stop the informer and the test's edits too), and which
// records every status write: tried, and made.
type statusGate struct {
	dynamic.Interface
	hold func(ctx context.Context, u *unstructured.Unstructured) error

	mu    sync.Mutex
	tried []statusWrite
	made  []statusWrite
}

// statusWrite is one status write: the object, the Accepted reason and
// observedGeneration it wrote, and when (the bubble's time).
type statusWrite struct {
	name, reason string
	gen          int64
	at           time.Time
}

// IsWatchListSemanticsUnSupported passes on the fake's answer to the
// reflector: without it, the informer waits for a streamed list the fake
// never sends.
func (g *statusGate) IsWatchListSemanticsUnSupported() bool { return true }

func (g *statusGate) Resource(r schema.GroupVersionResource) dynamic.NamespaceableResourceInterface {
	return gatedResource{g.Interface.Resource(r), g}
}

type gatedResource struct {
	dynamic.NamespaceableResourceInterface
	g *statusGate
}

func (r gatedResource) Namespace(ns string) dynamic.ResourceInterface {
	return gatedNamespace{r.NamespaceableResourceInterface.Namespace(ns), r.g}
}

type gatedNamespace struct {
	dynamic.ResourceInterface
	g *statusGate
}

func (r gatedNamespace) UpdateStatus(ctx context.Context, u *unstructured.Unstructured, o metav1.UpdateOptions) (*unstructured.Unstructured, error) {
	reason, _ := acceptedOf(u)["reason"].(string)
	w := statusWrite{name: u.GetName(), reason: reason, gen: u.GetGeneration(), at: time.Now()}
	r.g.mu.Lock()
	r.g.tried = append(r.g.tried, w)
	r.g.mu.Unlock()
	if r.g.hold != nil {
		if err := r.g.hold(ctx, u); err != nil {
			return nil, err
		}
	}
	got, err := r.ResourceInterface.UpdateStatus(ctx, u, o)
	if err == nil {
		w.at = time.Now()
		r.g.mu.Lock()
		r.g.made = append(r.g.made, w)
		r.g.mu.Unlock()
	}
	return got, err
}

// writes are the status writes made, or tried.
func (g *statusGate) writes(tried bool) []statusWrite {
	g.mu.Lock()
	defer g.mu.Unlock()
	if tried {
		return append([]statusWrite(nil), g.tried...)
	}
	return append([]statusWrite(nil), g.made...)
}

// pushSink hands each Set to the test: the latest one, if the test is
// behind.
type pushSink struct {
	mu sync.Mutex
	ch chan map[string][]*policy.ResiliencePolicy // capacity 1; "" holds the cluster-wide ones
}

func newPushSink() *pushSink {
	return &pushSink{ch: make(chan map[string][]*policy.ResiliencePolicy, 1)}
}

func (s *pushSink) Set(global []*policy.ResiliencePolicy, byNS map[string][]*policy.ResiliencePolicy) error {
	all := map[string][]*policy.ResiliencePolicy{"": global}
	for ns, p := range byNS {
		all[ns] = p
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.ch:
	default:
	}
	s.ch <- all
	return nil
}

// await waits for a Set that ok accepts, within a second of the bubble's
// time: a publish that waits for no status write takes none.
func (s *pushSink) await(t *testing.T, what string, ok func(map[string][]*policy.ResiliencePolicy) bool) {
	t.Helper()
	timeout := time.After(time.Second)
	for {
		select {
		case p := <-s.ch:
			if ok(p) {
				return
			}
		case <-timeout:
			t.Fatalf("%s: not published while a status write waits", what)
		}
	}
}

// timeoutOf is the timeout a served policy sets (-1: not served).
func timeoutOf(p map[string][]*policy.ResiliencePolicy, ns, name string) time.Duration {
	for _, x := range p[ns] {
		if x.Metadata.Name == name {
			return x.Spec.Timeout
		}
	}
	return -1
}

// TestStatusWriteDoesNotHoldBackPush: while the status write of one
// object hangs (an API server, or a proxy before it, that does not
// answer), the next change (an edit of that object, a new object) is
// published at once, and the status of every object still ends up
// written with its latest verdict, whether the write is answered at
// last or abandoned at its timeout (10 s) and made again (at once with
// the newer verdict that came meanwhile, else after the backoff: 1 s).
// Before, sync wrote every
// status before it read the next change: a hung write held every
// policy back for good, and 100 new objects held an edit back for 18 s.
func TestStatusWriteDoesNotHoldBackPush(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change string // "" (none), "edit" geo, or "create" pay
		answer bool   // the hung write is answered (else it times out)
		// wantGen is geo's observedGeneration once written; for a
		// write that times out, it is written between wantAfter and
		// wantBy after the write began (without a change, the second
		// sync of the start may have queued the same verdict again).
		wantGen           int64
		wantAfter, wantBy time.Duration
	}{
		{"answered, nothing else changed", "", true, 1, 0, 0},
		{"answered, the object edited", "edit", true, 2, 0, 0},
		{"answered, another object created", "create", true, 1, 0, 0},
		{"timed out, nothing else changed", "", false, 1, statusTimeout, statusTimeout + retryMin},
		{"timed out, the object edited", "edit", false, 2, statusTimeout, statusTimeout},
		{"timed out, another object created", "create", false, 1, statusTimeout, statusTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fc := fakeClient(object("shop", "geo", time.Now(), map[string]any{"service": "geo", "timeout": "2s"}))
				release := make(chan struct{})
				stuck := make(chan struct{})
				var once sync.Once
				g := &statusGate{Interface: fc, hold: func(ctx context.Context, _ *unstructured.Unstructured) error {
					first := false
					once.Do(func() { first = true; close(stuck) })
					if !first && !tc.answer {
						return nil // only the first write hangs
					}
					select {
					case <-release:
						return nil
					case <-ctx.Done():
						return ctx.Err()
					}
				}}
				sink := newPushSink()
				start(t, &Controller{Client: g, Sink: sink, GlobalNamespace: "minimesh", Log: quiet()})
				sink.await(t, "geo", func(p map[string][]*policy.ResiliencePolicy) bool {
					return timeoutOf(p, "shop", "geo") == 2*time.Second
				})
				<-stuck
				began := time.Now()

				switch tc.change {
				case "edit":
					edit(t, fc, "shop", "geo", func(u *unstructured.Unstructured) {
						_ = unstructured.SetNestedField(u.Object, "3s", "spec", "timeout")
					})
					sink.await(t, "the edit of geo", func(p map[string][]*policy.ResiliencePolicy) bool {
						return timeoutOf(p, "shop", "geo") == 3*time.Second
					})
				case "create":
					if _, err := fc.Resource(GVR).Namespace("shop").Create(context.Background(),
						object("shop", "pay", time.Now(), map[string]any{"service": "pay", "timeout": "1s"}), metav1.CreateOptions{}); err != nil {
						t.Fatal(err)
					}
					sink.await(t, "the new pay", func(p map[string][]*policy.ResiliencePolicy) bool { return timeoutOf(p, "shop", "pay") == time.Second })
				}
				if tc.answer {
					close(release)
				} else {
					time.Sleep(time.Minute) // the bubble's: past the timeout and the retry
				}
				synctest.Wait()

				m := acceptedOf(stored(t, fc, "shop", "geo"))
				if m["reason"] != "Valid" || m["observedGeneration"] != tc.wantGen {
					t.Fatalf("geo's status %v, want Valid for generation %d", m, tc.wantGen)
				}
				if tc.change == "create" {
					if m := acceptedOf(stored(t, fc, "shop", "pay")); m["reason"] != "Valid" {
						t.Errorf("pay's status %v, want Valid", m)
					}
				}
				var geo []statusWrite
				for _, w := range g.writes(false) {
					if w.name == "geo" {
						geo = append(geo, w)
					}
				}
				if len(geo) != 1 || geo[0].gen != tc.wantGen {
					t.Fatalf("geo's status written %+v, want once, for generation %d", geo, tc.wantGen)
				}
				if d := geo[0].at.Sub(began); !tc.answer && (d < tc.wantAfter || d > tc.wantBy) {
					t.Errorf("geo's status written %v after its write hung, want %v to %v", d, tc.wantAfter, tc.wantBy)
				}
			})
		})
	}
}

// TestStatusWritesLatestVerdictOnly: of the verdicts that come while
// the status writes wait (here: 20 objects refused as Conflict when 20
// older ones for the same services come, then Valid again when those
// go), each object's status is written once, with its latest verdict;
// no superseded verdict and no object already gone is written.
func TestStatusWritesLatestVerdictOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 20
		now := time.Now()
		fc := fakeClient()
		ctx := context.Background()
		create := func(name string, created time.Time, svc string) {
			t.Helper()
			if _, err := fc.Resource(GVR).Namespace("shop").Create(ctx, object("shop", name, created, map[string]any{"service": svc}), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		for i := range n {
			create(fmt.Sprintf("x%02d", i), now, fmt.Sprintf("svc-%02d", i))
		}
		release := make(chan struct{})
		g := &statusGate{Interface: fc, hold: func(ctx context.Context, _ *unstructured.Unstructured) error {
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}}
		sink := newPushSink()
		start(t, &Controller{Client: g, Sink: sink, GlobalNamespace: "minimesh", Log: quiet()})
		served := func(prefix byte) func(map[string][]*policy.ResiliencePolicy) bool {
			return func(p map[string][]*policy.ResiliencePolicy) bool {
				got := 0
				for _, x := range p["shop"] {
					if x.Metadata.Name[0] == prefix {
						got++
					}
				}
				return got == n && len(p["shop"]) == n
			}
		}
		sink.await(t, "the x objects", served('x'))

		for i := range n {
			create(fmt.Sprintf("y%02d", i), now.Add(-time.Hour), fmt.Sprintf("svc-%02d", i))
		}
		sink.await(t, "the older y objects in the x objects' place", served('y'))
		for i := range n {
			if err := fc.Resource(GVR).Namespace("shop").Delete(ctx, fmt.Sprintf("y%02d", i), metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		sink.await(t, "the x objects again", served('x'))
		synctest.Wait()
		close(release)
		synctest.Wait()

		for _, w := range g.writes(true) {
			if w.reason != "Valid" || w.name[0] != 'x' {
				t.Errorf("a superseded verdict was written: %s Accepted %s", w.name, w.reason)
			}
		}
		made := map[string]int{}
		for _, w := range g.writes(false) {
			made[w.name]++
		}
		for i := range n {
			name := fmt.Sprintf("x%02d", i)
			if made[name] != 1 {
				t.Errorf("%s's status written %d times, want once", name, made[name])
			}
			if m := acceptedOf(stored(t, fc, "shop", name)); m["reason"] != "Valid" {
				t.Errorf("%s's status %v, want Valid", name, m)
			}
		}
	})
}

// TestRunEndsItsStatusWrites: Run returns only once the status writer
// has: a write under way is abandoned with the controller's context,
// and no goroutine is left behind (the bubble fails on one).
func TestRunEndsItsStatusWrites(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fc := fakeClient(object("shop", "geo", time.Now(), map[string]any{"service": "geo"}))
		var mu sync.Mutex
		hung, ended := 0, 0
		began := make(chan struct{})
		g := &statusGate{Interface: fc, hold: func(ctx context.Context, _ *unstructured.Unstructured) error {
			mu.Lock()
			if hung++; hung == 1 {
				close(began)
			}
			mu.Unlock()
			<-ctx.Done()
			time.Sleep(time.Second) // a client that takes a while to give up
			mu.Lock()
			ended++
			mu.Unlock()
			return ctx.Err()
		}}
		stop := start(t, &Controller{Client: g, Sink: newPushSink(), GlobalNamespace: "minimesh", Log: quiet()})
		<-began
		synctest.Wait()
		stop()
		mu.Lock()
		defer mu.Unlock()
		if hung != 1 || ended != 1 {
			t.Fatalf("Run returned with %d status writes begun, %d ended; want 1 and 1", hung, ended)
		}
	})
}

// TestStatusQueueRetries: a write that fails is tried again after the
// backoff (1 s, doubling), unless a newer verdict for its object comes
// first; a write the API server refuses as such, or one whose object
// changed or went, is not.
func TestStatusQueueRetries(t *testing.T) {
	unavailable := apierrors.NewServiceUnavailable("etcd leader changed")
	gr := GVR.GroupResource()
	for _, tc := range []struct {
		name  string
		fails []error // the first writes' errors, in order; later ones succeed
		newer time.Duration
		want  []string // each write: "verdict@offset"
	}{
		{"a server error: 1 s, 2 s, 4 s later", []error{unavailable, unavailable, unavailable}, 0,
			[]string{"v1@0s", "v1@1s", "v1@3s", "v1@7s"}},
		{"a timeout", []error{context.DeadlineExceeded}, 0, []string{"v1@0s", "v1@1s"}},
		{"a newer verdict first", []error{unavailable}, 500 * time.Millisecond, []string{"v1@0s", "v2@500ms"}},
		{"a conflict", []error{apierrors.NewConflict(gr, "geo", errors.New("modified"))}, 0, []string{"v1@0s"}},
		{"not found", []error{apierrors.NewNotFound(gr, "geo")}, 0, []string{"v1@0s"}},
		{"forbidden", []error{apierrors.NewForbidden(gr, "geo", errors.New("RBAC"))}, 0, []string{"v1@0s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := time.Now()
				var got []string
				write := func(_ context.Context, j statusJob) error {
					got = append(got, fmt.Sprintf("%v@%v", j.verdict, time.Since(t0)))
					if len(got) <= len(tc.fails) {
						return fmt.Errorf("update the status: %w", tc.fails[len(got)-1])
					}
					return nil
				}
				q := newStatusQueue(quiet(), write, nil)
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { q.run(ctx); close(done) }()
				job := func(v string) []statusJob { return []statusJob{{key: "shop/geo", verdict: errors.New(v)}} }
				q.put(nil, job("v1"))
				if tc.newer > 0 {
					time.Sleep(tc.newer)
					q.put(nil, job("v2"))
				}
				time.Sleep(10 * time.Minute)
				cancel()
				<-done
				if fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Errorf("writes %v, want %v", got, tc.want)
				}
			})
		})
	}
}

// TestStatusQueueForgetsDeleted: an object gone from the latest sync
// has nothing left to write, and the writes keep the order in which
// the objects first came.
func TestStatusQueueForgetsDeleted(t *testing.T) {
	q := newStatusQueue(quiet(), nil, nil)
	jobs := func(names ...string) []statusJob {
		var js []statusJob
		for _, n := range names {
			js = append(js, statusJob{key: n})
		}
		return js
	}
	q.put(nil, jobs("a", "b", "c"))
	q.put(nil, jobs("a", "c", "d"))
	q.put(nil, jobs("b", "c", "d"))
	var got []string
	for j, ok := q.pop(); ok; j, ok = q.pop() {
		got = append(got, j.key)
	}
	if want := []string{"b", "c", "d"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("written %v, want %v", got, want)
	}
}

package policyctl

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/minimesh/minimesh/policy"
)

// setSink records every Set.
type setSink struct {
	mu     sync.Mutex
	sets   int
	global []*policy.ResiliencePolicy
	byNS   map[string][]*policy.ResiliencePolicy
}

func (s *setSink) Set(global []*policy.ResiliencePolicy, byNS map[string][]*policy.ResiliencePolicy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sets++
	s.global, s.byNS = global, byNS
	return nil
}

// names are the served policies of namespace ns ("" for the cluster-wide
// ones), by name.
func (s *setSink) names(ns string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	pols := s.global
	if ns != "" {
		pols = s.byNS[ns]
	}
	var out []string
	for _, p := range pols {
		out = append(out, p.Metadata.Name)
	}
	return out
}

func object(ns, name string, created time.Time, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "minimesh.io/v1alpha1", "kind": "ResiliencePolicy",
		"metadata": map[string]any{"namespace": ns, "name": name, "generation": int64(1), "resourceVersion": "1",
			"uid": "uid-" + ns + "-" + name},
		"spec": spec,
	}}
	u.SetCreationTimestamp(metav1.NewTime(created))
	return u
}

// fakeClient is a dynamic client whose updates behave as the API
// server's, which the status tests depend on: an update carries a
// resourceVersion precondition (Conflict when stale), the status
// subresource writes only the status and a plain update only the rest,
// and the generation grows with the spec. The fake's own tracker
// replaces the whole object either way: a status write made from a
// stale copy would undo a spec edit.
func fakeClient(objs ...runtime.Object) *dynamicfake.FakeDynamicClient {
	return newFakeClient(false, objs...)
}

// newFakeClient is fakeClient; prune drops status.lastValidSpec and
// lastValidGeneration from status writes, as a CRD from before them
// does (structural pruning).
func newFakeClient(prune bool, objs ...runtime.Object) *dynamicfake.FakeDynamicClient {
	c := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{GVR: "ResiliencePolicyList"}, objs...)
	rv := int64(100) // above the objects' own; the reactor runs under the fake's lock
	c.PrependReactor("update", "resiliencepolicies", func(a k8stesting.Action) (bool, runtime.Object, error) {
		in := a.(k8stesting.UpdateAction).GetObject().(*unstructured.Unstructured)
		got, err := c.Tracker().Get(GVR, a.GetNamespace(), in.GetName())
		if err != nil {
			return true, nil, err
		}
		cur := got.(*unstructured.Unstructured)
		if in.GetResourceVersion() != cur.GetResourceVersion() {
			return true, nil, apierrors.NewConflict(GVR.GroupResource(), in.GetName(), errors.New("the object has been modified"))
		}
		out := cur.DeepCopy()
		if a.GetSubresource() == "status" {
			out.Object["status"] = runtime.DeepCopyJSONValue(in.Object["status"])
			if prune {
				unstructured.RemoveNestedField(out.Object, "status", "lastValidSpec")
				unstructured.RemoveNestedField(out.Object, "status", "lastValidGeneration")
			}
		} else {
			out.SetLabels(in.GetLabels())
			out.SetAnnotations(in.GetAnnotations())
			if !reflect.DeepEqual(in.Object["spec"], cur.Object["spec"]) {
				out.Object["spec"] = runtime.DeepCopyJSONValue(in.Object["spec"])
				out.SetGeneration(cur.GetGeneration() + 1)
			}
		}
		rv++
		out.SetResourceVersion(strconv.FormatInt(rv, 10))
		if err := c.Tracker().Update(GVR, out, a.GetNamespace()); err != nil {
			return true, nil, err
		}
		return true, out.DeepCopy(), nil
	})
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestPublishDoesNotWaitForStatus: the policies reach the sink while the
// status writes are still under way (an API server that is slow, or
// client-go's 5 writes a second for 100 new objects), and /readyz
// (Synced) answers meanwhile. Before, sync wrote every object's status
// first, holding the lock Synced takes, and only then published: one
// status write that hung held every policy back and made the controller
// unready.
func TestPublishDoesNotWaitForStatus(t *testing.T) {
	now := time.Now()
	c := fakeClient(
		object("shop", "geo", now, map[string]any{"service": "geo", "timeout": "2s"}),
		object("minimesh", "all", now, map[string]any{"service": "*", "timeout": "5s"}),
	)
	release := make(chan struct{})
	c.PrependReactor("update", "resiliencepolicies", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() == "status" {
			<-release // an API server that does not answer
		}
		return false, nil, nil
	})
	sink := &setSink{}
	ctl := &Controller{Client: c, Sink: sink, GlobalNamespace: "minimesh", Log: quiet()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { ctl.Run(ctx); close(done) }()
	defer func() { cancel(); close(release); <-done }()

	waitFor(t, "the policies published while a status write hangs", func() bool {
		return len(sink.names("shop")) == 1 && len(sink.names("")) == 1
	})
	synced := make(chan bool)
	go func() { synced <- ctl.Synced() }()
	select {
	case ok := <-synced:
		if !ok {
			t.Fatal("not synced")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Synced (/readyz) waits for a status write")
	}
}

// TestConflictOlderServed: two objects in one namespace that govern the
// same service: the older is served, the newer is refused with
// Accepted=False, reason Conflict, and every other policy of the
// namespace is still served and still follows changes. Before, both were
// handed over, the server refused the namespace's whole set (keeping its
// last one, and answering a sidecar that starts there nothing at all),
// and both objects said Accepted=True.
func TestConflictOlderServed(t *testing.T) {
	now := time.Now()
	c := fakeClient(
		object("shop", "b-old", now.Add(-time.Hour), map[string]any{"service": "geo", "timeout": "2s"}),
		object("shop", "a-new", now, map[string]any{"service": "geo", "timeout": "1s"}),
		object("shop", "pay", now, map[string]any{"service": "pay", "timeout": "3s"}),
		object("minimesh", "all", now, map[string]any{"service": "*", "timeout": "5s"}),
		object("minimesh", "all-too", now.Add(time.Minute), map[string]any{"service": "*", "timeout": "6s"}),
	)
	sink := &setSink{}
	ctl := &Controller{Client: c, Sink: sink, GlobalNamespace: "minimesh", Log: quiet()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ctl.Run(ctx)

	waitFor(t, "a publish", func() bool { return len(sink.names("shop")) > 0 })
	if got := sink.names("shop"); len(got) != 2 || got[0] != "b-old" || got[1] != "pay" {
		t.Fatalf("shop serves %v, want the older geo policy and pay: [b-old pay]", got)
	}
	if got := sink.names(""); len(got) != 1 || got[0] != "all" {
		t.Fatalf("cluster-wide: %v, want [all]", got)
	}
	cond := func(ns, name string) (string, string, string) {
		u, err := c.Resource(GVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		if len(conds) == 0 {
			return "", "", ""
		}
		m := conds[0].(map[string]any)
		return m["status"].(string), m["reason"].(string), m["message"].(string)
	}
	for _, x := range []struct{ ns, name, status, reason string }{
		{"shop", "a-new", "False", "Conflict"}, {"shop", "b-old", "True", "Valid"}, {"shop", "pay", "True", "Valid"},
		{"minimesh", "all-too", "False", "Conflict"}, {"minimesh", "all", "True", "Valid"},
	} {
		waitFor(t, x.name+"'s status", func() bool { st, _, _ := cond(x.ns, x.name); return st != "" })
		st, reason, msg := cond(x.ns, x.name)
		if st != x.status || reason != x.reason {
			t.Errorf("%s/%s: Accepted=%s %s (%s), want %s %s", x.ns, x.name, st, reason, msg, x.status, x.reason)
		}
	}

	// The older one goes: the newer is served.
	if err := c.Resource(GVR).Namespace("shop").Delete(ctx, "b-old", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the newer geo policy served once the older is gone", func() bool {
		got := sink.names("shop")
		return len(got) == 2 && got[0] == "a-new"
	})
}

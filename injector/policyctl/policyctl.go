// Package policyctl feeds the xDS server: from ResiliencePolicy objects in
// the cluster (an informer; each object validated with the same code as
// `minimesh policy lint`, its verdict written to its status), or from a
// directory of files. It is level-triggered: every change recomputes the
// policies of every namespace from what is there now, which is simple and
// cannot drift.
package policyctl

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/minimesh/minimesh/policy"
)

// GVR is the ResiliencePolicy resource.
var GVR = schema.GroupVersionResource{Group: "minimesh.io", Version: "v1alpha1", Resource: "resiliencepolicies"}

// Sink receives the policies: the xDS server. Set replaces the whole
// state at once (global: cluster-wide; byNS: each namespace's own), so a
// sidecar never sees half of a change, and a namespace that is not in
// byNS, whether it lost its last policy or never had one, is served the
// global ones.
type Sink interface {
	Set(global []*policy.ResiliencePolicy, byNS map[string][]*policy.ResiliencePolicy) error
}

// Controller watches ResiliencePolicy objects.
type Controller struct {
	Client dynamic.Interface
	// Discovery tells whether the CRD is installed: until it is, there
	// is nothing to serve, which is a ready state, not a failure (the
	// webhook must not wait for it).
	Discovery discovery.DiscoveryInterface
	Sink      Sink
	// GlobalNamespace holds the cluster-wide policies (the release's
	// namespace): every sidecar sees them unless its namespace has its own
	// policy for the same service.
	GlobalNamespace string
	Log             *slog.Logger

	informer cache.SharedIndexInformer
	missing  atomic.Bool
	mu       sync.Mutex
	lastGood map[string]*policy.ResiliencePolicy // by namespace/name: served while a newer version is invalid
}

// Run watches until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	for c.Discovery != nil {
		if _, err := c.Discovery.ServerResourcesForGroupVersion(GVR.GroupVersion().String()); err == nil {
			break
		} else if !c.missing.Load() {
			c.Log.Warn("the ResiliencePolicy CRD is not installed: serving no policies until it is (kubectl apply -f charts/minimesh/crds)", "err", err)
		}
		c.missing.Store(true)
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
	c.missing.Store(false)
	c.lastGood = map[string]*policy.ResiliencePolicy{}
	f := dynamicinformer.NewDynamicSharedInformerFactory(c.Client, 10*time.Minute)
	c.mu.Lock()
	c.informer = f.ForResource(GVR).Informer()
	c.mu.Unlock()
	kick := make(chan struct{}, 1)
	notify := func(any) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	_, _ = c.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: notify, DeleteFunc: notify, UpdateFunc: func(_, o any) { notify(o) },
	})
	f.Start(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced)
	c.sync(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
			c.sync(ctx)
		}
	}
}

// Synced reports whether the first list has arrived, or there is no CRD
// to list.
func (c *Controller) Synced() bool {
	c.mu.Lock()
	inf := c.informer
	c.mu.Unlock()
	return c.missing.Load() || inf != nil && inf.HasSynced()
}

func (c *Controller) sync(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	byNS := map[string][]*policy.ResiliencePolicy{}
	seen := map[string]bool{}
	objs := c.informer.GetStore().List()
	sort.Slice(objs, func(i, j int) bool {
		return objs[i].(*unstructured.Unstructured).GetName() < objs[j].(*unstructured.Unstructured).GetName()
	})
	for _, o := range objs {
		u := o.(*unstructured.Unstructured)
		key := u.GetNamespace() + "/" + u.GetName()
		seen[key] = true
		p, err := decode(u)
		if err == nil {
			c.lastGood[key] = p
		} else {
			c.Log.Warn("policy refused; its last good version keeps serving", "policy", key, "err", err)
		}
		c.writeStatus(ctx, u, err)
		if good := c.lastGood[key]; good != nil {
			byNS[u.GetNamespace()] = append(byNS[u.GetNamespace()], good)
		}
	}
	for key := range c.lastGood {
		if !seen[key] {
			delete(c.lastGood, key)
		}
	}
	global := byNS[c.GlobalNamespace]
	delete(byNS, c.GlobalNamespace)
	if err := c.Sink.Set(global, byNS); err != nil {
		c.Log.Error("publish policies", "err", err)
	}
}

// decode validates an object as `minimesh policy lint` validates a file.
func decode(u *unstructured.Unstructured) (*policy.ResiliencePolicy, error) {
	doc := map[string]any{
		"apiVersion": policy.APIVersion, "kind": policy.Kind,
		"metadata": map[string]any{"name": u.GetName(), "namespace": u.GetNamespace()},
		"spec":     u.Object["spec"],
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	ps, err := policy.Decode(u.GetNamespace()+"/"+u.GetName(), b)
	if err != nil {
		return nil, err
	}
	if len(ps) != 1 {
		return nil, fmt.Errorf("want one policy, got %d", len(ps))
	}
	ps[0].Source = "ResiliencePolicy " + u.GetNamespace() + "/" + u.GetName()
	return ps[0], nil
}

// writeStatus sets the Accepted condition and observedGeneration when
// they changed.
func (c *Controller) writeStatus(ctx context.Context, u *unstructured.Unstructured, verdict error) {
	status, reason, msg := "True", "Valid", "the policy is served to sidecars"
	if verdict != nil {
		status, reason, msg = "False", "Invalid", verdict.Error()
		if c.lastGood[u.GetNamespace()+"/"+u.GetName()] != nil {
			msg += " (the last valid version keeps serving)"
		}
	}
	gen := u.GetGeneration()
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, x := range conds {
		m, _ := x.(map[string]any)
		if m["type"] == "Accepted" && m["status"] == status && m["message"] == msg && m["observedGeneration"] == gen {
			return
		}
	}
	obj := u.DeepCopy()
	_ = unstructured.SetNestedField(obj.Object, gen, "status", "observedGeneration")
	_ = unstructured.SetNestedSlice(obj.Object, []any{map[string]any{
		"type": "Accepted", "status": status, "reason": reason, "message": msg,
		"observedGeneration": gen, "lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
	}}, "status", "conditions")
	_, err := c.Client.Resource(GVR).Namespace(u.GetNamespace()).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
	if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		c.Log.Error("write policy status", "policy", u.GetNamespace()+"/"+u.GetName(), "err", err)
	}
}

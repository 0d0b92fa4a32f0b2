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
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
	"github.com/minimesh/minimesh/policy/envoy"
	"github.com/minimesh/minimesh/xds"
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

	mu       sync.Mutex // informer only: Synced (the controller's /readyz) never waits for a sync
	informer cache.SharedIndexInformer
	missing  atomic.Bool
	lastGood map[string]*policy.ResiliencePolicy // by namespace/name: served while a newer version is invalid; sync's only
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

// sync publishes what the objects hold now, then writes their
// statuses. The publish comes first: a status write is an API call,
// rate-limited by client-go (5 a second by default) and without a
// timeout of its own, and a sidecar must not wait for every object's
// status (100 new objects: 18 s) or for an API server that hangs, to get
// its policies.
func (c *Controller) sync(ctx context.Context) {
	c.mu.Lock()
	inf := c.informer
	c.mu.Unlock()
	objs := inf.GetStore().List()
	// Oldest first: of two objects that govern the same service in one
	// namespace, the older is served (a newer one cannot take a service
	// over by being created), whatever their names.
	sort.Slice(objs, func(i, j int) bool {
		a, b := objs[i].(*unstructured.Unstructured), objs[j].(*unstructured.Unstructured)
		ta, tb := a.GetCreationTimestamp(), b.GetCreationTimestamp()
		if !ta.Equal(&tb) {
			return ta.Before(&tb)
		}
		if a.GetNamespace() != b.GetNamespace() {
			return a.GetNamespace() < b.GetNamespace()
		}
		return a.GetName() < b.GetName()
	})
	verdicts := make([]error, len(objs))
	served := make([]bool, len(objs))
	seen := map[string]bool{}
	for i, o := range objs {
		u := o.(*unstructured.Unstructured)
		key := u.GetNamespace() + "/" + u.GetName()
		seen[key] = true
		p, err := decode(u)
		if err == nil {
			c.lastGood[key] = p
		} else {
			c.Log.Warn("policy refused; its last good version keeps serving", "policy", key, "err", err)
		}
		verdicts[i] = err
	}
	for key := range c.lastGood {
		if !seen[key] {
			delete(c.lastGood, key)
		}
	}
	// The cluster-wide set first, then each namespace's own over it: a
	// policy that would share its Envoy cluster with one already taken
	// (the same service twice in one namespace) is refused, so that
	// neither the server refuses the whole namespace's set (freezing
	// every change to it, and leaving a sidecar that starts there with
	// no answer at all) nor a sidecar NACKs it.
	var global []*policy.ResiliencePolicy
	byNS := map[string][]*policy.ResiliencePolicy{}
	for _, pass := range []bool{true, false} {
		for i, o := range objs {
			u := o.(*unstructured.Unstructured)
			if (u.GetNamespace() == c.GlobalNamespace) != pass {
				continue
			}
			good := c.lastGood[u.GetNamespace()+"/"+u.GetName()]
			if good == nil {
				continue
			}
			var err error
			if pass {
				err = envoy.CheckNames(append(slices.Clip(global), good), "")
			} else {
				err = envoy.CheckNames(xds.Merge(global, append(slices.Clip(byNS[u.GetNamespace()]), good)), u.GetNamespace())
			}
			if err != nil {
				c.Log.Warn("policy refused: another one governs its service", "policy", u.GetNamespace()+"/"+u.GetName(), "err", err)
				verdicts[i] = conflict{err}
				continue
			}
			served[i] = true
			if pass {
				global = append(global, good)
			} else {
				byNS[u.GetNamespace()] = append(byNS[u.GetNamespace()], good)
			}
		}
	}
	if err := c.Sink.Set(global, byNS); err != nil {
		c.Log.Error("publish policies", "err", err)
	}
	for i, o := range objs {
		c.writeStatus(ctx, o.(*unstructured.Unstructured), verdicts[i], served[i])
	}
}

// conflict is the verdict on a valid policy that another one, older,
// keeps from being served.
type conflict struct{ error }

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
// they changed. served says whether a version of the object is served.
func (c *Controller) writeStatus(ctx context.Context, u *unstructured.Unstructured, verdict error, served bool) {
	status, reason, msg := "True", "Valid", "the policy is served to sidecars"
	var cf conflict
	switch {
	case errors.As(verdict, &cf):
		status, reason, msg = "False", "Conflict", cf.Error()+" (the older policy is served; this one is not)"
	case verdict != nil:
		status, reason, msg = "False", "Invalid", verdict.Error()
		if served {
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

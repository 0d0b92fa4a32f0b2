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
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
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
	// is no policy, a known empty set that is published (the sidecars
	// are answered, with the endpoints) and a ready state, not a
	// failure (the webhook must not wait for it).
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
	// accepted holds, by object, the last generation this process
	// accepted, for the moment between accepting it and its status
	// recording it (status.lastValidSpec): a bad edit that comes before
	// that write is answered with it too, and the status write of that
	// edit records it for every replica and restart. sync's only.
	accepted map[objKey]lastValid
	// unrecorded says the CRD prunes status.lastValidSpec (one from
	// before it): the last valid versions cannot be shared, so none is
	// taken from accepted, and writeStatus stops comparing them (or it
	// would write every status at every sync). Read by sync, learnt by
	// the status writes (their own goroutine).
	unrecorded atomic.Bool
	// statuses holds the status writes sync hands over. Run's.
	statuses *statusQueue
	// crdPoll is how often a missing CRD is looked for (10 s).
	crdPoll time.Duration
	// synced, when set (tests), is called with the objects the latest
	// sync read once their status writes are done (made or given up).
	synced func(objs []any)
}

// objKey names an object, and its incarnation: one deleted and created
// again under the same name has a new UID and none of the old one's
// versions.
type objKey struct {
	uid  types.UID
	name string // namespace/name
}

// lastValid is the last valid version of an object: the spec of a
// generation the controller accepted.
type lastValid struct {
	spec any
	gen  int64
}

// Run watches until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	poll := c.crdPoll
	if poll == 0 {
		poll = 10 * time.Second
	}
	for c.Discovery != nil {
		_, err := c.Discovery.ServerResourcesForGroupVersion(GVR.GroupVersion().String())
		if err == nil {
			break
		}
		switch {
		case !apierrors.IsNotFound(err):
			// No answer (an API server unreachable, say): the
			// policies are not known, and publishing none would make
			// every sidecar drop its own. Not ready, as with an
			// informer that has not listed yet.
			c.Log.Warn("cannot tell whether the ResiliencePolicy CRD is installed; retrying", "err", err)
		case !c.missing.Load():
			// No CRD: no policy can exist, a known empty set, which
			// the xDS server must hear of, or it answers no sidecar
			// (no policies, no endpoints either) while /readyz says
			// ready. Published before Synced says so.
			c.Log.Warn("the ResiliencePolicy CRD is not installed: serving no policies until it is (kubectl apply -f charts/minimesh/crds)", "err", err)
			if err := c.Sink.Set(nil, nil); err != nil {
				c.Log.Error("publish policies", "err", err)
			}
			c.missing.Store(true)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(poll):
		}
	}
	c.missing.Store(false)
	c.accepted = map[objKey]lastValid{}
	c.statuses = newStatusQueue(c.Log, c.writeJob, c.synced)
	var workers sync.WaitGroup
	defer workers.Wait() // a write under way ends with ctx: Run leaves no goroutine behind
	workers.Go(func() { c.statuses.run(ctx) })
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
	c.sync()
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
			c.sync()
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

// sync publishes what the objects hold now, then hands their statuses
// to the status writer (statusQueue) and returns: a status write is an
// API call, rate-limited by client-go (5 a second by default), and
// neither a sidecar nor the next change may wait for every object's
// status (100 new objects: 18 s) or for an API server that hangs.
func (c *Controller) sync() {
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
	goods := make([]*policy.ResiliencePolicy, len(objs))
	records := make([]lastValid, len(objs))
	seen := map[objKey]bool{}
	for i, o := range objs {
		u := o.(*unstructured.Unstructured)
		seen[keyOf(u)] = true
		goods[i], records[i], verdicts[i] = c.resolve(u)
	}
	for k := range c.accepted {
		if !seen[k] {
			delete(c.accepted, k)
		}
	}
	served := make([]bool, len(objs))
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
			good := goods[i]
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
	// What the sink left out for size is not served, and its object
	// says so (TooMany) rather than Accepted=True.
	markTooMany(c.Sink, goods, verdicts, served)
	jobs := make([]statusJob, len(objs))
	for i, o := range objs {
		u := o.(*unstructured.Unstructured)
		jobs[i] = statusJob{key: u.GetNamespace() + "/" + u.GetName(), u: u, verdict: verdicts[i], served: served[i], rec: records[i]}
	}
	c.statuses.put(objs, jobs)
}

// resolve decides what of u is served: its spec if valid, else the last
// valid version the cluster holds, its status.lastValidSpec (or the one
// this process accepted and has not recorded yet, when newer). That
// version is kept in the cluster, not in one process, so that the
// chart's two replicas serve the same and a restart serves it too; and
// since a status can be written by hand (through the status
// subresource), it is validated again as a spec is, never trusted. rec
// is the last valid version the status is to record; verdict is nil
// when the spec is valid.
func (c *Controller) resolve(u *unstructured.Unstructured) (good *policy.ResiliencePolicy, rec lastValid, verdict error) {
	key := u.GetNamespace() + "/" + u.GetName()
	gen := u.GetGeneration()
	p, err := decode(u, u.Object["spec"], "")
	if err == nil {
		rec = lastValid{spec: u.Object["spec"], gen: gen}
		c.accepted[keyOf(u)] = rec
		return p, rec, nil
	}
	rec = recorded(u)
	if m, ok := c.accepted[keyOf(u)]; ok && !c.unrecorded.Load() && m.gen > rec.gen && m.gen <= gen {
		// Ours, not recorded yet: this sync's status write records it
		// (and the message says what the status will hold). Not with a
		// CRD that drops it: a replica that did not see it would then
		// serve and say otherwise, for good.
		rec = m
	}
	switch {
	case rec.spec == nil:
		c.Log.Warn("policy refused; it has no valid version to serve", "policy", key, "err", err)
		return nil, rec, invalid{err: err}
	case rec.gen < 1 || rec.gen > gen:
		c.Log.Warn("policy refused; its status.lastValidGeneration is not one of its generations", "policy", key, "err", err, "lastValidGeneration", rec.gen)
		return nil, rec, invalid{err: err, last: rec.gen, lastErr: fmt.Errorf("status.lastValidGeneration %d is not a generation of this object (1 to %d)", rec.gen, gen)}
	}
	last, lerr := decode(u, rec.spec, fmt.Sprintf(" (its last valid version, generation %d)", rec.gen))
	if lerr != nil {
		c.Log.Warn("policy refused, and its status.lastValidSpec too", "policy", key, "err", err, "lastValidErr", lerr)
		return nil, rec, invalid{err: err, last: rec.gen, lastErr: lerr}
	}
	c.Log.Warn("policy refused; its last valid version keeps serving", "policy", key, "err", err, "lastValidGeneration", rec.gen)
	return last, rec, invalid{err: err, last: rec.gen}
}

func (l lastValid) equal(o lastValid) bool {
	return l.gen == o.gen && reflect.DeepEqual(l.spec, o.spec)
}

func keyOf(u *unstructured.Unstructured) objKey {
	return objKey{uid: u.GetUID(), name: u.GetNamespace() + "/" + u.GetName()}
}

// recorded is the last valid version u's status holds (zero if none).
func recorded(u *unstructured.Unstructured) lastValid {
	spec, ok, _ := unstructured.NestedFieldNoCopy(u.Object, "status", "lastValidSpec")
	if !ok {
		return lastValid{}
	}
	gen, _, _ := unstructured.NestedInt64(u.Object, "status", "lastValidGeneration")
	return lastValid{spec: spec, gen: gen}
}

// invalid is the verdict on an object whose spec the decoder refuses.
// last is the generation of the last valid version recorded (0: none);
// lastErr why that one is not served either.
type invalid struct {
	err     error
	last    int64
	lastErr error
}

func (e invalid) Error() string { return e.err.Error() }
func (e invalid) Unwrap() error { return e.err }

// conflict is the verdict on a valid policy that another one, older,
// keeps from being served.
type conflict struct{ error }

// decode validates spec, as u's, as `minimesh policy lint` validates a
// file. note ends the policy's Source.
func decode(u *unstructured.Unstructured, spec any, note string) (*policy.ResiliencePolicy, error) {
	doc := map[string]any{
		"apiVersion": policy.APIVersion, "kind": policy.Kind,
		"metadata": map[string]any{"name": u.GetName(), "namespace": u.GetNamespace()},
		"spec":     spec,
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
	ps[0].Source = "ResiliencePolicy " + u.GetNamespace() + "/" + u.GetName() + note
	return ps[0], nil
}

// maxMessage is the CRD's bound on a condition's message: a longer one
// would make the API server refuse the whole status write.
const maxMessage = 32768

// writeStatus sets the Accepted condition, observedGeneration and the
// last valid version (status.lastValidSpec, lastValidGeneration) when
// they changed. served says whether a version of the object is served.
// What it writes depends only on the object as the cluster holds it (and
// on rec, which the write then records), never on what this process saw
// before, so that the chart's two replicas write the same status and
// each skips the other's write instead of answering it with its own
// (each write is an informer event for the other: before, they rewrote
// it at each other without end). The error is the API server's.
func (c *Controller) writeStatus(ctx context.Context, u *unstructured.Unstructured, verdict error, served bool, rec lastValid) error {
	status, reason, msg := "True", "Valid", "the policy is served to sidecars"
	var cf conflict
	var inv invalid
	tmStatus, tmReason, tmMsg, tm := tooManyCondition(verdict)
	switch {
	case tm:
		status, reason, msg = tmStatus, tmReason, tmMsg
	case errors.As(verdict, &cf):
		status, reason, msg = "False", "Conflict", cf.Error()+" (the older policy is served; this one is not)"
	case errors.As(verdict, &inv):
		status, reason, msg = "False", "Invalid", inv.Error()
		switch {
		case inv.lastErr != nil:
			msg += fmt.Sprintf(" (its last valid version, generation %d, in status.lastValidSpec, is refused too: %v; nothing is served for it)", inv.last, inv.lastErr)
		case inv.last == 0:
			msg += " (no valid version of it was recorded: nothing is served for it)"
		case served:
			msg += fmt.Sprintf(" (the last valid version keeps serving: generation %d)", inv.last)
		}
	case verdict != nil:
		status, reason, msg = "False", "Invalid", verdict.Error()
	}
	if len(msg) > maxMessage {
		msg = strings.ToValidUTF8(msg[:maxMessage-len("…")], "") + "…"
	}
	gen := u.GetGeneration()
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	at := -1
	for i, x := range conds {
		if m, _ := x.(map[string]any); m["type"] == "Accepted" {
			at = i
		}
	}
	observed, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
	if at >= 0 && observed == gen && (c.unrecorded.Load() || recorded(u).equal(rec)) {
		m := conds[at].(map[string]any)
		if m["status"] == status && m["reason"] == reason && m["message"] == msg && m["observedGeneration"] == gen {
			return nil
		}
	}
	since := time.Now().UTC().Format(time.RFC3339)
	if at >= 0 {
		if m := conds[at].(map[string]any); m["status"] == status && m["lastTransitionTime"] != nil {
			since, _ = m["lastTransitionTime"].(string) // a transition is a change of status, not of message
		}
	} else {
		at = len(conds)
		conds = append(conds, nil)
	}
	conds[at] = map[string]any{
		"type": "Accepted", "status": status, "reason": reason, "message": msg,
		"observedGeneration": gen, "lastTransitionTime": since,
	}
	obj := u.DeepCopy()
	_ = unstructured.SetNestedField(obj.Object, gen, "status", "observedGeneration")
	_ = unstructured.SetNestedSlice(obj.Object, conds, "status", "conditions")
	if rec.spec != nil {
		_ = unstructured.SetNestedField(obj.Object, runtime.DeepCopyJSONValue(rec.spec), "status", "lastValidSpec")
		_ = unstructured.SetNestedField(obj.Object, rec.gen, "status", "lastValidGeneration")
	}
	got, err := c.Client.Resource(GVR).Namespace(u.GetNamespace()).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("update the status of generation %d: %w", gen, err)
	}
	if rec.spec != nil {
		// A CRD from before status.lastValidSpec (Helm installs CRDs
		// but never upgrades them) prunes it without an error: noticed
		// here, or every sync would write every object's status again.
		_, kept, _ := unstructured.NestedFieldNoCopy(got.Object, "status", "lastValidSpec")
		if kept == c.unrecorded.Load() {
			c.unrecorded.Store(!kept)
			if !kept {
				c.Log.Warn("the ResiliencePolicy CRD drops status.lastValidSpec (Helm never upgrades a CRD): a policy made invalid serves nothing rather than its last valid version; kubectl apply -f charts/minimesh/crds")
			} else {
				c.Log.Info("the ResiliencePolicy CRD holds status.lastValidSpec again")
			}
		}
	}
	return nil
}

// writeJob is the status writer's write.
func (c *Controller) writeJob(ctx context.Context, j statusJob) error {
	return c.writeStatus(ctx, j.u, j.verdict, j.served, j.rec)
}

package policyctl

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/policy/settle"
	"github.com/prometheus/client_golang/prometheus"
)

// Files serves a directory of policy files, for local use and the demo:
// a policy's metadata.namespace puts it in that namespace; without one it
// is cluster-wide. As with ResiliencePolicy objects, a service may have a
// policy in each namespace and a cluster-wide one, and a namespace's own
// wins in that namespace: Files hands the cluster-wide set and each
// namespace's to the Sink, which merges them (xds.Merge) as it does the
// objects'.
//
// The directory is looked at every Interval, and a change is served under
// the sidecar's rule for its own --policy-dir, which policy/settle holds
// (docs/operations.md, "Policy reloads"): only once the files have stayed
// byte for byte the same for Settle (EmptyGrace for a file of the last
// good set that is now empty).
// A file rewritten in place is read half written now and then, and the
// controller pushes what it serves to every sidecar: a valid first half
// (one document of three) would be in force everywhere until the next
// look. Bytes already loaded are not decoded again, so a failing set is
// logged once, and a set that does not load keeps the last good one
// serving.
type Files struct {
	Dir  string
	Sink Sink
	// Interval is how often the directory is looked at; default 2s.
	Interval time.Duration
	// Settle is how long the files must stay the same before a change is
	// served; default 200ms, the sidecar's. A look more than Settle/2
	// late (the controller was kept from running, and a writer may have
	// been too) puts the change off by another Settle, at most 3 times.
	Settle time.Duration
	// EmptyGrace is how long a file that had content in the last good
	// load must stay empty before that is served: a truncated file is a
	// write in progress until then. Default 5s, the sidecar's.
	EmptyGrace time.Duration
	Log        *slog.Logger

	last    string // the last good set, encoded
	failing bool   // the last load failed: the next good one is logged even if its set is the same
	gate    settle.Gate
	reloads *prometheus.CounterVec // Report's; nil until then
	// load loads the directory; nil is policy.PerNamespace.Load (tests
	// count the calls: decoding is what a large unchanged set cost).
	load func(dir string) ([]*policy.ResiliencePolicy, error)
}

// Report counts the loads in minimesh_policy_reloads_total{result}, the
// sidecar's name for its own loads of --policy-dir (docs/metrics.md).
func (f *Files) Report(reg prometheus.Registerer) error {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "minimesh_policy_reloads_total",
		Help: "Loads of --policy-dir, by result (success or error); unchanged files are not loaded again.",
	}, []string{"result"})
	if err := reg.Register(c); err != nil {
		return fmt.Errorf("policy reload metrics: %w", err)
	}
	// Both exist at zero, so that increase() sees the first error.
	c.WithLabelValues("success")
	c.WithLabelValues("error")
	f.reloads = c
	return nil
}

// Load reads the directory once and publishes it, without waiting for
// it to settle: at start-up there is nothing better to serve. The error
// is the decoder's (file:line:col). Two policies for one service are
// refused only within one namespace, or both cluster-wide
// (policy.PerNamespace): a sidecar gets one of them. A cluster-wide
// policy and a namespace's own for the same service are the override the
// namespace asks for, not a conflict.
func (f *Files) Load() error {
	f.init()
	s := settle.Read(f.Dir)
	// Served whether or not the files changed while they were loaded: if
	// they did, the next look sees it, and serves them once they settle.
	err := f.serve(f.loadDir())
	f.gate.Loaded(s, err == nil)
	return err
}

// Run looks at the directory until ctx ends.
func (f *Files) Run(ctx context.Context) {
	f.init()
	t := time.NewTicker(orDefault(f.Interval, 2*time.Second))
	defer t.Stop()
	var settled <-chan time.Time
	for {
		var due time.Time // a timer's value is when it was due
		select {
		case <-ctx.Done():
			return
		case due = <-t.C:
		case due = <-settled:
		}
		settled = nil
		if wait := f.check(due); wait > 0 {
			settled = time.After(wait)
		}
	}
}

// check looks at the directory in a look due at due and serves what it
// holds if that has settled; it returns how long until it may have, or 0
// when nothing waits.
func (f *Files) check(due time.Time) time.Duration {
	s := settle.Read(f.Dir)
	ok, wait := f.gate.Decide(s, time.Now(), due)
	if !ok {
		return wait
	}
	pols, err := f.loadDir()
	// policy.Load reads the files itself: only a second read can tell
	// that it read what s holds and not a write in between.
	if now := settle.Read(f.Dir); !now.Same(s) {
		_, wait = f.gate.Decide(now, time.Now(), due) // start over from the files as they are
		return wait
	}
	if err = f.serve(pols, err); err != nil {
		f.Log.Error("policy files do not load; the last good set keeps serving", "dir", f.Dir, "err", err)
	}
	f.gate.Loaded(s, err == nil)
	return 0
}

func (f *Files) init() {
	f.gate.Settle, f.gate.EmptyGrace = f.Settle, f.EmptyGrace
}

func (f *Files) loadDir() ([]*policy.ResiliencePolicy, error) {
	if f.load != nil {
		return f.load(f.Dir)
	}
	return policy.PerNamespace.Load(f.Dir)
}

// serve publishes a load, pols or its error err, and counts it; the
// error is err or the Sink's.
func (f *Files) serve(pols []*policy.ResiliencePolicy, err error) error {
	if err == nil {
		err = f.publish(pols)
	}
	if f.reloads != nil {
		result := "success"
		if err != nil {
			result = "error"
		}
		f.reloads.WithLabelValues(result).Inc()
	}
	f.failing = err != nil
	return err
}

func (f *Files) publish(pols []*policy.ResiliencePolicy) error {
	enc, _ := json.Marshal(pols)
	if string(enc) == f.last && !f.failing {
		return nil
	}
	if string(enc) != f.last {
		byNS := map[string][]*policy.ResiliencePolicy{}
		var global []*policy.ResiliencePolicy
		for _, p := range pols {
			if p.Metadata.Namespace == "" {
				global = append(global, p)
			} else {
				byNS[p.Metadata.Namespace] = append(byNS[p.Metadata.Namespace], p)
			}
		}
		if err := f.Sink.Set(global, byNS); err != nil {
			return err
		}
		f.last = string(enc)
	}
	// After a failure too: the operator hears that the files load again.
	f.Log.Info("policies served from files", "dir", f.Dir, "count", len(pols))
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

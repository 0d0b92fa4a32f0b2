package policyctl

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/minimesh/minimesh/policy"
)

// Files serves a directory of policy files, for local use and the demo:
// a policy's metadata.namespace puts it in that namespace; without one it
// is cluster-wide. As with ResiliencePolicy objects, a service may have a
// policy in each namespace and a cluster-wide one, and a namespace's own
// wins in that namespace: Files hands the cluster-wide set and each
// namespace's to the Sink, which merges them (xds.Merge) as it does the
// objects'. The directory is read again every Interval; a set that does
// not load keeps the last good one serving.
type Files struct {
	Dir      string
	Sink     Sink
	Interval time.Duration
	Log      *slog.Logger

	last string // the last good set, encoded
}

// Load reads the directory once and publishes it; the error is the
// decoder's (file:line:col). Two policies for one service are refused
// only within one namespace, or both cluster-wide (policy.PerNamespace):
// a sidecar gets one of them. A cluster-wide policy and a namespace's own
// for the same service are the override the namespace asks for, not a
// conflict.
func (f *Files) Load() error {
	pols, err := policy.PerNamespace.Load(f.Dir)
	if err != nil {
		return err
	}
	enc, _ := json.Marshal(pols)
	if string(enc) == f.last {
		return nil
	}
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
	f.Log.Info("policies served from files", "dir", f.Dir, "count", len(pols))
	return nil
}

// Run reloads until ctx ends.
func (f *Files) Run(ctx context.Context) {
	interval := f.Interval
	if interval <= 0 {
		interval = 2 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := f.Load(); err != nil {
				f.Log.Error("policy files do not load; the last good set keeps serving", "dir", f.Dir, "err", err)
			}
		}
	}
}

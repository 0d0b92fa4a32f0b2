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
// is cluster-wide. The directory is read again every Interval; a set that
// does not load keeps the last good one serving.
type Files struct {
	Dir      string
	Sink     Sink
	Interval time.Duration
	Log      *slog.Logger

	last string // the last good set, encoded
}

// Load reads the directory once and publishes it; the error is the
// decoder's (file:line:col).
func (f *Files) Load() error {
	pols, err := policy.Load(f.Dir)
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

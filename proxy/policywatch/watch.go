// Package policywatch reloads the sidecar's policies from a directory
// whenever it changes.
//
// It watches the directory, not the files: a Kubernetes ConfigMap volume
// updates by writing a new hidden directory and swapping the ..data
// symlink, which changes no file that a per-file watch would follow.
package policywatch

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/minimesh/minimesh/policy"
)

// Result is one load of the directory.
type Result struct {
	Policies []*policy.ResiliencePolicy
	Err      error // non-nil: the load failed and Policies is nil
}

// Watcher loads a directory now and again on every change.
type Watcher struct {
	Dir string
	// Debounce gathers the burst of events of one update into one load.
	Debounce time.Duration
	// Resync loads the directory this often even without events, in case
	// the directory did not exist when the watch began or events were
	// lost; an unchanged directory is not reloaded.
	Resync time.Duration
}

// Run calls apply with the first load before returning from the first
// call, then once per change, until ctx ends. Loads of a directory whose
// content has not changed are skipped.
func (w *Watcher) Run(ctx context.Context, apply func(Result)) {
	debounce, resync := w.Debounce, w.Resync
	if debounce <= 0 {
		debounce = 100 * time.Millisecond
	}
	if resync <= 0 {
		resync = 10 * time.Second
	}
	var last [32]byte
	load := func(force bool) {
		sum := fingerprint(w.Dir)
		if !force && sum == last {
			return
		}
		last = sum
		pols, err := policy.Load(w.Dir)
		if err != nil {
			apply(Result{Err: err})
			return
		}
		apply(Result{Policies: pols})
	}
	// Watch before the first load, so that no change after it is missed.
	fw, err := fsnotify.NewWatcher()
	var events chan fsnotify.Event
	var errs chan error
	if err == nil {
		defer fw.Close()
		errs = fw.Errors // drained, or fsnotify's reader blocks
		if fw.Add(w.Dir) == nil {
			events = fw.Events
		}
	} else {
		fw = nil
	}
	load(true)
	tick := time.NewTicker(resync)
	defer tick.Stop()
	var fire <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			if ev.Name == filepath.Clean(w.Dir) && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				events = nil // its watch went with it; the resync adds it again
			}
			fire = time.After(debounce)
		case <-errs:
			fire = time.After(debounce) // an overflow may have hidden a change
		case <-fire:
			fire = nil
			load(false)
		case <-tick.C:
			if events == nil && fw != nil && fw.Add(w.Dir) == nil {
				events = fw.Events
			}
			load(false)
		}
	}
}

// fingerprint hashes the names, sizes, times and contents of the policy
// files of dir, following symlinks, so that an event that changed
// nothing (or a resync) does not reload.
func fingerprint(dir string) [32]byte {
	h := sha256.New()
	entries, err := os.ReadDir(dir)
	if err != nil {
		h.Write([]byte("error: " + err.Error()))
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		if !policy.IsPolicyFile(n) {
			continue // Load reads neither hidden nor non-policy files
		}
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil && !errors.Is(err, syscall.EISDIR) {
			h.Write([]byte("error: " + err.Error()))
		}
		h.Write([]byte(n))
		h.Write([]byte{0})
		h.Write(b)
		h.Write([]byte{0})
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// Package policywatch reloads the sidecar's policies from a directory
// whenever it changes.
//
// It watches the directory, not the files: a Kubernetes ConfigMap volume
// updates by writing a new hidden directory and swapping the ..data
// symlink, which changes no file that a per-file watch would follow.
//
// A file rewritten in place (truncated, then written: what editors, cp
// and shell redirections do) can be read half written, and a half file
// may be empty, fail to parse, or parse as a valid subset of its
// policies. None of these may replace the policies in force, so a load is
// applied only once the files have stayed the same for a while; see
// [Watcher.Settle] and [Watcher.EmptyGrace].
package policywatch

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/policy/settle"
)

// Result is one load of the directory.
type Result struct {
	Policies []*policy.ResiliencePolicy
	Err      error // non-nil: the load failed and Policies is nil
	// Skipped are the entries of the directory that the load did not read
	// (policy.Report), for the caller's log: a ConfigMap key without its
	// .yaml extension loads nothing, and only the log can say so.
	Skipped []policy.Skipped
}

// Watcher loads a directory now and again on every change.
type Watcher struct {
	// Dir is the directory, or a single policy file, whose edits reload
	// as a directory's do.
	Dir string
	// Debounce gathers the burst of events of one update into one look
	// at the directory; default 100ms. Only events for what a load reads
	// count (the directory, its policy files, a ConfigMap volume's ..data
	// entries, what the policy files' symlinks go through): a log file or
	// an editor's swap file written more often than Debounce kept the look
	// from ever coming, and a policy change waited for the resync.
	Debounce time.Duration
	// MaxDelay bounds how long events may put a look off, from the first
	// event it waits for: policy files written continuously are still
	// looked at (and applied once they stay the same for Settle). Default
	// 1s.
	MaxDelay time.Duration
	// Settle is how long the policy files must stay byte for byte the
	// same before a load of them is applied: a writer that pauses for
	// less than this in the middle of a file is never applied half done
	// (one that pauses longer is). A look that comes more than Settle/2
	// late, the watcher itself having been kept from running, puts the
	// change off by another Settle, at most 3 times. Default 200ms.
	Settle time.Duration
	// EmptyGrace is how long a policy file that had content in the last
	// good load must stay empty before that is applied: a truncated file
	// is taken as a write in progress, not as "no policies", for this
	// long. Removing the file is applied after Settle. Default 5s.
	EmptyGrace time.Duration
	// Resync loads the directory this often even without events, in case
	// the directory did not exist when the watch began or events were
	// lost; an unchanged directory is not reloaded. Default 10s.
	Resync time.Duration
	// Kick, when it receives, is taken as a change of the directory: the
	// sidecar's SIGHUP, for an operator who wants a look now. The look
	// goes through the same settling as any change.
	Kick <-chan struct{}

	// noNotify leaves changes to the resync (tests: fsnotify's reader
	// waits in a system call, which a synctest bubble cannot wait out).
	noNotify bool
	// events, if set, stands in for fsnotify's (tests: events sent in a
	// synctest bubble); it implies noNotify.
	events <-chan fsnotify.Event
	// beforeLoad, if set, runs just before a reload reads the files
	// (tests: a write that lands between the look and the load).
	beforeLoad func()
}

// Run calls apply with the first load before returning from the first
// call, then once per change, until ctx ends. Loads of a directory whose
// content has not changed are skipped. A change is applied once it has
// settled (see Settle and EmptyGrace), and only if the files read the
// same before and after the load, so that the load is of them and not of
// a write that came in between.
//
// The first load is not held back: the caller waits for it to turn
// ready and has nothing better to serve. Should the files change while
// it reads them, that change is seen and applied, settled, like any.
func (w *Watcher) Run(ctx context.Context, apply func(Result)) {
	debounce := orDefault(w.Debounce, 100*time.Millisecond)
	maxDelay := orDefault(w.MaxDelay, time.Second)
	g := &settle.Gate{Settle: w.Settle, EmptyGrace: w.EmptyGrace}
	// Watch before the first load, so that no change after it is missed.
	var fw *fsnotify.Watcher
	var events <-chan fsnotify.Event
	var errs chan error
	// A file is watched through its directory: an editor that saves by
	// renaming a new file over it ends a watch of the file itself.
	watched := w.Dir
	if fi, err := os.Stat(w.Dir); err == nil && !fi.IsDir() {
		watched = filepath.Dir(w.Dir)
	}
	if w.events != nil {
		events = w.events
	} else if !w.noNotify {
		var err error
		if fw, err = fsnotify.NewWatcher(); err == nil {
			defer fw.Close()
			errs = fw.Errors // drained, or fsnotify's reader blocks
			if fw.Add(watched) == nil {
				events = fw.Events
			}
		} else {
			fw = nil
		}
	}
	var fire <-chan time.Time
	after := func(wait time.Duration) {
		if wait > 0 {
			fire = time.After(wait)
		}
	}
	// burst is when the first of the events the next look waits out
	// came; zero when that look is not waiting for events.
	var burst time.Time
	changed := func() {
		now := time.Now()
		if burst.IsZero() {
			burst = now
		}
		fire = time.After(min(debounce, max(burst.Add(maxDelay).Sub(now), 0)))
	}

	first := settle.Read(w.Dir)
	res := load(w.Dir)
	apply(res)
	g.Loaded(first, res.Err == nil)

	tick := time.NewTicker(orDefault(w.Resync, 10*time.Second))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			if fw != nil && ev.Name == filepath.Clean(watched) && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				events = nil // its watch went with it; the resync adds it again
			}
			if g.Relevant(w.Dir, ev.Name) {
				changed()
			}
		case <-errs:
			changed() // an overflow may have hidden a change
		case <-w.Kick:
			g.Forget()
			changed()
		case due := <-fire: // a timer's value is when it was due
			fire, burst = nil, time.Time{}
			after(w.check(g, apply, due))
		case due := <-tick.C:
			if events == nil && fw != nil && fw.Add(watched) == nil {
				events = fw.Events
			}
			after(w.check(g, apply, due))
		}
	}
}

// check looks at the directory, in a look that was due at due, and
// applies its load if the gate lets it. It returns how long to wait
// before looking again without an event, or 0 for no need.
func (w *Watcher) check(g *settle.Gate, apply func(Result), due time.Time) time.Duration {
	s := settle.Read(w.Dir)
	ok, wait := g.Decide(s, time.Now(), due)
	if !ok {
		return wait
	}
	if w.beforeLoad != nil {
		w.beforeLoad()
	}
	res := load(w.Dir)
	// policy.Load reads the files itself: only a second read can tell
	// that it read what s holds and not a write in between.
	if now := settle.Read(w.Dir); !now.Same(s) {
		_, wait = g.Decide(now, time.Now(), due) // start over from the files as they are
		return wait
	}
	apply(res)
	g.Loaded(s, res.Err == nil)
	return 0
}

// load is one policy.Load of dir as a Result.
func load(dir string) Result {
	pols, rep, err := policy.OneSidecar.LoadReport(dir)
	if err != nil {
		return Result{Err: err, Skipped: rep.Skipped}
	}
	return Result{Policies: pols, Skipped: rep.Skipped}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

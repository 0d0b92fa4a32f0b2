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
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/minimesh/minimesh/policy"
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
	g := &gate{
		settle:     orDefault(w.Settle, 200*time.Millisecond),
		emptyGrace: orDefault(w.EmptyGrace, 5*time.Second),
	}
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

	first := read(w.Dir)
	res := load(w.Dir)
	apply(res)
	g.loaded(first, res.Err == nil)

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
			if g.relevant(w.Dir, ev.Name) {
				changed()
			}
		case <-errs:
			changed() // an overflow may have hidden a change
		case <-w.Kick:
			g.forget()
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
func (w *Watcher) check(g *gate, apply func(Result), due time.Time) time.Duration {
	s := read(w.Dir)
	ok, wait := g.decide(s, time.Now(), due)
	if !ok {
		return wait
	}
	if w.beforeLoad != nil {
		w.beforeLoad()
	}
	res := load(w.Dir)
	// policy.Load reads the files itself: only a second read can tell
	// that it read what s holds and not a write in between.
	if now := read(w.Dir); now.sum != s.sum {
		_, wait = g.decide(now, time.Now(), due) // start over from the files as they are
		return wait
	}
	apply(res)
	g.loaded(s, res.Err == nil)
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

// gate decides when what the directory holds may be applied: only once
// it has stayed the same for settle, or for emptyGrace when a policy
// file that had content in the last good load is now empty (most likely
// truncated by a writer that has not written yet).
type gate struct {
	settle, emptyGrace time.Duration

	applied [32]byte       // the sum of the last load applied
	good    map[string]int // the file sizes of the last load without error

	pending bool      // cand differs from applied and is waited on
	cand    [32]byte  // the sum being waited on
	ready   time.Time // when cand may be applied
	stalls  int       // late looks that put ready off

	through map[string]bool // see snapshot.through, as last read
	anyName bool            // see snapshot.anyName, as last read
}

// relevant reports whether an event for name, in dir, can change what a
// load of dir reads: the directory itself, a policy file, the entries
// of a ConfigMap volume's swap (..data, ..data_tmp and the timestamped
// directories), or an entry a policy file's symlink goes through. Any
// other name (a log file, an editor's .geo.yaml.swp, a README) is none of
// the watcher's business, unless a policy file's symlink could not be
// traced to an entry of dir (see snapshot.anyName).
func (g *gate) relevant(dir, name string) bool {
	if name == "" || g.anyName || filepath.Clean(name) == filepath.Clean(dir) {
		return true
	}
	base := filepath.Base(name)
	return strings.HasPrefix(base, "..") || policy.IsPolicyFile(base) || g.through[base]
}

// maxStalls bounds how often late looks put a change off, so that a
// watcher that is always late still applies it.
const maxStalls = 3

// decide says whether s, read at now by a look that was due at due, is
// to be loaded and applied; if not, wait is how long until it could be,
// or 0 when there is nothing to apply (s is what was applied last).
//
// A look more than settle/2 late (the process did not run: CPU
// throttling, an overloaded node) is no proof that the files were quiet,
// since a writer on the same starved machine may not have run either:
// the change is put off by another settle.
func (g *gate) decide(s snapshot, now, due time.Time) (apply bool, wait time.Duration) {
	g.through, g.anyName = s.through, s.anyName
	if s.sum == g.applied {
		g.pending = false
		return false, 0
	}
	if !g.pending || s.sum != g.cand {
		hold := g.settle
		if g.emptied(s) {
			hold = max(hold, g.emptyGrace)
		}
		g.pending, g.cand, g.ready, g.stalls = true, s.sum, now.Add(hold), 0
	}
	if now.Before(g.ready) {
		return false, g.ready.Sub(now)
	}
	if now.Sub(due) > g.settle/2 && g.stalls < maxStalls {
		g.stalls++
		g.ready = now.Add(g.settle)
		return false, g.settle
	}
	return true, 0
}

// emptied reports whether a policy file of s is empty that was not in
// the last good load.
func (g *gate) emptied(s snapshot) bool {
	for name, size := range s.sizes {
		if size == 0 && g.good[name] > 0 {
			return true
		}
	}
	return false
}

// forget makes the next look apply what the directory holds even if it
// is what was applied last: an operator's explicit reload is answered
// with a load (and its log line), not with silence.
func (g *gate) forget() { g.applied, g.pending = [32]byte{}, false }

// loaded records that the load of s was applied.
func (g *gate) loaded(s snapshot, good bool) {
	g.applied, g.pending, g.through, g.anyName = s.sum, false, s.through, s.anyName
	if good {
		g.good = s.sizes
	}
}

// snapshot is what the policy files of a directory held at one read.
type snapshot struct {
	sum   [32]byte       // of names and contents; zero: unknown
	sizes map[string]int // the size of each policy file read
	// through holds the entries of the directory that its policy files'
	// symlinks point through (geo.yaml -> live/geo.yaml, or ->
	// /abs/dir/live/geo.yaml: "live"), so that replacing one is seen by
	// its event although its name is no policy file's.
	through map[string]bool
	// anyName is set when a policy file's symlink could not be traced to
	// an entry of dir: its target is outside dir (-> ../other/geo.yaml,
	// -> /etc/geo.yaml, or a path to dir that its symlinks hide), or the
	// link could not be read. What such a link goes through cannot be
	// told from an event's name, so every event in dir counts, as all did
	// before events were sorted by name: more looks (bounded by
	// Watcher.MaxDelay), none missed.
	anyName bool
}

// read hashes the names and contents of the policy files of dir,
// following symlinks, so that an event that changed nothing (a new
// mtime, say) or a resync does not reload, and so that a change can be
// seen to have settled. A dir that is a file is hashed as the one file
// Load reads, whatever its name: hashing only that it was no directory
// left its edits unseen until a SIGHUP.
func read(dir string) snapshot {
	h := sha256.New()
	var entries []os.DirEntry
	only := "" // the name of the file when dir is one
	// ReadDir opens dir, which blocks for good on a named pipe: a path
	// that is no directory is read as the one file that Load reads
	// (policy.ReadFile refuses a pipe without opening it).
	fi, err := os.Stat(dir)
	switch {
	case err == nil && !fi.IsDir():
		only, dir = filepath.Base(dir), filepath.Dir(dir)
		if fi, err = os.Lstat(filepath.Join(dir, only)); err == nil {
			entries = []os.DirEntry{fs.FileInfoToDirEntry(fi)}
		}
	case err == nil:
		entries, err = os.ReadDir(dir)
	}
	if err != nil {
		h.Write([]byte("error: " + err.Error()))
	}
	names := make([]string, 0, len(entries))
	types := make(map[string]fs.FileMode, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
		types[e.Name()] = e.Type()
	}
	var roots []string // see entered; found at the first absolute link
	sort.Strings(names)
	s := snapshot{sizes: make(map[string]int, len(names))}
	for _, n := range names {
		if only == "" && !policy.IsPolicyFile(n) {
			continue // Load reads neither hidden nor non-policy files
		}
		path := filepath.Join(dir, n)
		if types[n]&fs.ModeSymlink != 0 {
			first := ""
			if t, err := os.Readlink(path); err == nil {
				first = entered(dir, t, &roots)
			}
			if first == "" {
				s.anyName = true
			} else {
				if s.through == nil {
					s.through = map[string]bool{}
				}
				s.through[first] = true
			}
		}
		// policy.ReadFile, as Load reads: a named pipe here blocked the
		// watcher for good, and a huge file was read whole at every look.
		b, err := policy.ReadFile(path)
		switch {
		case err == nil:
			s.sizes[n] = len(b)
		case only != "" || !errors.Is(err, policy.ErrNotRegular): // Load skips those in a directory
			h.Write([]byte("error: " + err.Error()))
		}
		h.Write([]byte(n))
		h.Write([]byte{0})
		h.Write(b)
		h.Write([]byte{0})
	}
	copy(s.sum[:], h.Sum(nil))
	return s
}

// entered returns the entry of dir that a symlink in dir to target goes
// through first ("live" for live/geo.yaml, and for /abs/dir/live/geo.yaml
// as `ln -s "$PWD/live/geo.yaml"` makes), or "" when target leaves dir.
// An absolute target is taken relative to dir made absolute and, failing
// that, to dir with its symlinks resolved (a target written from the real
// path of a dir reached through a link); *roots holds those once found.
func entered(dir, target string, roots *[]string) string {
	rel := []string{filepath.Clean(target)}
	if filepath.IsAbs(target) {
		if *roots == nil {
			*roots = []string{} // found, even if none
			if abs, err := filepath.Abs(dir); err == nil {
				*roots = append(*roots, abs)
				if real, err := filepath.EvalSymlinks(abs); err == nil && real != abs {
					*roots = append(*roots, real)
				}
			}
		}
		rel = rel[:0]
		for _, root := range *roots {
			if r, err := filepath.Rel(root, target); err == nil {
				rel = append(rel, r)
			}
		}
	}
	for _, r := range rel {
		if first, _, _ := strings.Cut(filepath.ToSlash(r), "/"); first != ".." && first != "." {
			return first
		}
	}
	return ""
}

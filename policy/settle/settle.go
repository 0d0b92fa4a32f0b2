// Package settle says when a change to a directory of policy files may
// be loaded: only once the files have stayed byte for byte the same for
// a while, so that a file rewritten in place (truncated, then written)
// is not loaded half written. The sidecar's watch of --policy-dir
// (proxy/policywatch) and the controller's (injector/policyctl) apply
// the one rule; docs/operations.md, "Policy reloads", gives its figures.
//
// It reads and hashes files, and decodes nothing: a look at files that
// did not change costs a read, not a decode.
package settle

import (
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/minimesh/minimesh/policy"
)

// The defaults of Gate's fields.
const (
	defaultSettle     = 200 * time.Millisecond
	defaultEmptyGrace = 5 * time.Second
)

// maxStalls bounds how often late looks put a change off, so that a
// watcher that is always late still loads it.
const maxStalls = 3

// Gate decides when what a directory holds may be loaded: only once it
// has stayed the same for Settle, or for EmptyGrace when a policy file
// that had content in the last good load is now empty (most likely
// truncated by a writer that has not written yet). Its zero value, with
// the default figures, is ready to use; it is not safe for concurrent
// use.
type Gate struct {
	// Settle is how long the files must stay the same; default 200ms. A
	// look that comes more than Settle/2 late puts the change off by
	// another Settle, at most 3 times.
	Settle time.Duration
	// EmptyGrace is how long a file of the last good load must stay
	// empty; default 5s.
	EmptyGrace time.Duration

	applied [32]byte       // the sum of the last load, good or not
	good    map[string]int // the file sizes of the last load without error

	pending bool      // cand differs from applied and is waited on
	cand    [32]byte  // the sum being waited on
	ready   time.Time // when cand may be loaded
	stalls  int       // late looks that put ready off

	through map[string]bool // see Snapshot.through, as last read
	anyName bool            // see Snapshot.anyName, as last read
}

// Decide says whether s, read at now by a look that was due at due, is
// to be loaded; if not, wait is how long until it could be, or 0 when
// there is nothing to load (s is what was loaded last).
//
// A look more than Settle/2 late (the process did not run: CPU
// throttling, an overloaded node) is no proof that the files were quiet,
// since a writer on the same starved machine may not have run either:
// the change is put off by another Settle.
func (g *Gate) Decide(s Snapshot, now, due time.Time) (load bool, wait time.Duration) {
	g.through, g.anyName = s.through, s.anyName
	if s.sum == g.applied {
		g.pending = false
		return false, 0
	}
	settle := orDefault(g.Settle, defaultSettle)
	if !g.pending || s.sum != g.cand {
		hold := settle
		if g.emptied(s) {
			hold = max(hold, orDefault(g.EmptyGrace, defaultEmptyGrace))
		}
		g.pending, g.cand, g.ready, g.stalls = true, s.sum, now.Add(hold), 0
	}
	if now.Before(g.ready) {
		return false, g.ready.Sub(now)
	}
	if now.Sub(due) > settle/2 && g.stalls < maxStalls {
		g.stalls++
		g.ready = now.Add(settle)
		return false, settle
	}
	return true, 0
}

// Loaded records that s was loaded, well (good) or not: the same bytes
// are not loaded again, and the sizes of a good load are what an emptied
// file is told by.
func (g *Gate) Loaded(s Snapshot, good bool) {
	g.applied, g.pending, g.through, g.anyName = s.sum, false, s.through, s.anyName
	if good {
		g.good = s.sizes
	}
}

// Forget makes the next Decide load what the directory holds, settled,
// even if it is what was loaded last: an operator's explicit reload is
// answered with a load (and its log line), not with silence.
func (g *Gate) Forget() { g.applied, g.pending = [32]byte{}, false }

// Relevant reports whether an event for name, in dir, can change what a
// Read of dir reads: the directory itself, a policy file, the entries of
// a ConfigMap volume's swap (..data, ..data_tmp and the timestamped
// directories), or an entry that a policy file's symlink went through at
// the last Read that Decide or Loaded was given. Any other name (a log
// file, an editor's .geo.yaml.swp, a README) is not, unless a policy
// file's symlink could not be traced to an entry of dir (see
// Snapshot.anyName).
func (g *Gate) Relevant(dir, name string) bool {
	if name == "" || g.anyName || filepath.Clean(name) == filepath.Clean(dir) {
		return true
	}
	base := filepath.Base(name)
	return strings.HasPrefix(base, "..") || policy.IsPolicyFile(base) || g.through[base]
}

// emptied reports whether a policy file of s is empty that was not in
// the last good load.
func (g *Gate) emptied(s Snapshot) bool {
	for name, size := range s.sizes {
		if size == 0 && g.good[name] > 0 {
			return true
		}
	}
	return false
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Snapshot is what the policy files of a directory held at one Read.
type Snapshot struct {
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
	// told from an event's name, so every event in dir counts: more
	// looks, none missed.
	anyName bool
}

// Same reports whether s and t read the same names and contents.
func (s Snapshot) Same(t Snapshot) bool { return s.sum == t.sum }

// Read hashes the names and contents of the policy files of dir,
// following symlinks, so that an event that changed nothing (a new
// mtime, say) or a periodic look does not reload, and so that a change
// can be seen to have settled. A dir that is a file is hashed as the one
// file a load reads, whatever its name: hashing only that it was no
// directory left its edits unseen.
func Read(dir string) Snapshot {
	h := sha256.New()
	var entries []os.DirEntry
	only := "" // the name of the file when dir is one
	// ReadDir opens dir, which blocks for good on a named pipe: a path
	// that is no directory is read as the one file that a load reads
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
	s := Snapshot{sizes: make(map[string]int, len(names))}
	for _, n := range names {
		if only == "" && !policy.IsPolicyFile(n) {
			continue // a load reads neither hidden nor non-policy files
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
		// policy.ReadFile, as a load reads: a named pipe here blocked the
		// watcher for good, and a huge file was read whole at every look.
		b, err := policy.ReadFile(path)
		switch {
		case err == nil:
			s.sizes[n] = len(b)
		case only != "" || !errors.Is(err, policy.ErrNotRegular): // a load skips those in a directory
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

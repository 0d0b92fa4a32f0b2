package policy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Scope says which policies of one set may not govern the same service:
// those that reach the same sidecar, since a sidecar holds one policy per
// service and NACKs a set that has two.
type Scope uint8

const (
	// OneSidecar is a set that one sidecar reads whole: its --policy-dir
	// (a mounted ConfigMap's keys), what `minimesh check` validates for
	// it, `minimesh policy lint`. Every policy of it applies to that
	// sidecar whatever its metadata.namespace (which plays no part in a
	// sidecar's matching), so a service has one policy in the set.
	OneSidecar Scope = iota
	// PerNamespace is the control plane's set (`minimesh controller
	// --policy-dir`): metadata.namespace says which sidecars get a policy,
	// none meaning every namespace, where a namespace's own policy for a
	// service wins over the cluster-wide one (xds.Merge, as for
	// ResiliencePolicy objects). A service has one policy per namespace
	// and one cluster-wide.
	PerNamespace
)

// File is one file of a set: Name labels positions in errors and each
// policy's Source; Data is its content.
type File struct {
	Name string
	Data []byte
}

// Load reads policies from files and directories as one sidecar does
// (OneSidecar.Load): `minimesh-proxy --policy-dir`, `minimesh policy lint`.
func Load(paths ...string) ([]*ResiliencePolicy, error) {
	return OneSidecar.Load(paths...)
}

// Load reads policies from files and directories, in the order given;
// a directory contributes its .yaml, .yml and .json files in name order,
// without descending. Names that start with a dot are skipped: in a
// mounted ConfigMap they are the ..data and timestamped entries that the
// visible key symlinks point through, and reading them too would load
// every key twice. The files are decoded as one set (Decode). A file
// reached twice (named twice, through a symlink or another spelling of
// its path) is read once, under the first name it was reached by.
//
// A path that cannot be read fails the whole load with a plain error,
// and so does one named explicitly that is not a regular file (a named
// pipe, a device: ReadFile) or a file over MaxFileBytes.
func (s Scope) Load(paths ...string) ([]*ResiliencePolicy, error) {
	ps, _, err := s.LoadReport(paths...)
	return ps, err
}

// LoadReport is Load that also says what the directories held that it
// did not read, for callers that show it to whoever wrote them (`minimesh
// policy lint`, the sidecar's load log): a policy in a file named `geo`
// is otherwise never applied without a word. The report is filled in
// whether or not the load fails, unless a path cannot be read at all.
func (s Scope) LoadReport(paths ...string) ([]*ResiliencePolicy, Report, error) {
	names, rep, err := policyFiles(paths)
	if err != nil {
		return nil, rep, err
	}
	files := make([]File, len(names))
	for i, name := range names {
		data, err := ReadFile(name)
		if err != nil {
			return nil, rep, err
		}
		files[i] = File{Name: name, Data: data}
	}
	ps, err := s.Decode(files)
	return ps, rep, err
}

// Report is what a load passed over.
type Report struct {
	// Skipped are the entries of the directories that were not read, in
	// the order met, hidden ones (a dot first) aside: those are how a
	// mounted ConfigMap works, and listing its ..data entries at every
	// load would bury the entries that matter.
	Skipped []Skipped
	// Bare are the directories named that hold no policy file at all
	// (hidden ones aside), which is most likely the wrong directory or
	// files named without their extension.
	Bare []string
}

// Skipped is an entry of a directory that a load did not read.
type Skipped struct {
	Path   string // the directory joined with the entry's name
	Reason string // NotPolicyFile, or what else kept it out
}

func (s Skipped) String() string { return "skipped " + s.Path + ": " + s.Reason }

// NotPolicyFile is why an entry that is no .yaml, .yml or .json file is
// skipped; `minimesh check` says it of a ConfigMap's keys too.
const NotPolicyFile = "not .yaml, .yml or .json"

// MaxFileBytes bounds one policy file. Whatever is read is held whole
// and parsed, so without a bound a path such as /dev/zero, or a huge file
// put in the directory by mistake, runs the sidecar out of memory. It is
// the input problemLine can still search (maxProblemBytes), and far over
// any real set: a ConfigMap holds at most 1 MiB in all.
const MaxFileBytes = 8 << 20

// ErrNotRegular is the error, wrapped, of ReadFile for a path that is not
// a regular file once its symlinks are followed.
var ErrNotRegular = errors.New("not a regular file")

// ReadFile reads one policy file, as every reader of policy files must:
// only a regular file (symlinks followed, as a ConfigMap's keys are
// symlinks) and at most MaxFileBytes of it. A named pipe would block the
// reader until some writer came, and a device may never end. Errors name
// the file.
func ReadFile(name string) ([]byte, error) {
	// Stat before opening: opening a named pipe blocks, and opening a
	// device can do something of its own (a tape rewinds on close).
	fi, err := os.Stat(name)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	if err := regular(name, fi); err != nil {
		return nil, err
	}
	// O_NONBLOCK: should the path become a named pipe after the Stat, the
	// open returns and the second check refuses it. A regular file's
	// reads ignore the flag.
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	if err := regular(name, fi); err != nil {
		return nil, err
	}
	tooBig := func() error {
		return fmt.Errorf("load %s: larger than %d MiB, the most a policy file may hold", name, MaxFileBytes>>20)
	}
	if fi.Size() > MaxFileBytes {
		return nil, tooBig()
	}
	// The size is a hint (the file may grow while read): the limit is
	// what holds memory to the bound.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	if len(data) > MaxFileBytes {
		return nil, tooBig()
	}
	return data, nil
}

// regular refuses what is not a regular file, saying what it is.
func regular(name string, fi fs.FileInfo) error {
	if fi.Mode().IsRegular() {
		return nil
	}
	return fmt.Errorf("load %s: %w (%s)", name, ErrNotRegular, irregular(fi.Mode()))
}

// irregular says what a file that is not a regular one is.
func irregular(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "a special file"
}

// Decode decodes files as one set, in the order given: each file as
// policy.Decode does (a .json one as JSON), and a policy for a service
// that an earlier one of the same scope governs, in the same file or an
// earlier one, is an error at its spec.service naming the first. Callers
// that hold the files' contents rather than a directory (`minimesh check`
// reading a ConfigMap) get the verdict a sidecar reading them gets, with
// the same messages.
//
// Problems of all files come back together in one ErrorList (at most
// maxFileErrors a file, then a count); on any, no policies: a set partly
// applied would leave some destinations under a policy nobody wrote.
func (s Scope) Decode(files []File) ([]*ResiliencePolicy, error) {
	c := &claims{scope: s, first: map[claim]*ResiliencePolicy{}}
	var (
		all  []*ResiliencePolicy
		errs ErrorList
	)
	for _, file := range files {
		f := decodeFile(file.Name, file.Data, c)
		all = append(all, f.good...)
		errs = append(errs, f.errs...)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return all, nil
}

// claims are the services the policies of a set govern so far.
type claims struct {
	scope Scope
	first map[claim]*ResiliencePolicy
}

// claim is what two policies of one scope may not share.
type claim struct {
	namespace string // PerNamespace only; "" is cluster-wide
	service   string
}

// take claims p's service for p; if another policy has it already, take
// returns that one and the message that refuses p.
func (c *claims) take(p *ResiliencePolicy) (*ResiliencePolicy, string) {
	k := claim{service: p.Spec.Service}
	if c.scope == PerNamespace {
		k.namespace = p.Metadata.Namespace
	}
	prev := c.first[k]
	switch {
	case prev == nil:
		c.first[k] = p
		return nil, ""
	case c.scope != PerNamespace:
		return prev, fmt.Sprintf("service %q already has a policy at %s", k.service, prev.Source)
	case k.namespace == "":
		return prev, fmt.Sprintf("service %q already has a cluster-wide policy at %s", k.service, prev.Source)
	default:
		return prev, fmt.Sprintf("service %q already has a policy in namespace %q at %s", k.service, k.namespace, prev.Source)
	}
}

// policyFiles expands the paths into the files to read, and reports
// what the directories held besides. A file named explicitly is read
// whatever its extension (and refused by ReadFile if it is not a regular
// file). One reached twice is read once: the same file (os.SameFile)
// whatever the spelling of its path, as `lint dd $PWD/dd/a.yaml` or a
// directory and a symlink to it name it, else it conflicted with itself.
func policyFiles(paths []string) ([]string, Report, error) {
	var (
		files []string
		seen  []fs.FileInfo // of files, in order; the sets are small
		rep   Report
		// skippedFI is the Stat of each of skipped, nil if it failed.
		skipped   []Skipped
		skippedFI []fs.FileInfo
	)
	add := func(name string, fi fs.FileInfo) {
		for _, prev := range seen {
			if os.SameFile(prev, fi) {
				return
			}
		}
		seen = append(seen, fi)
		files = append(files, name)
	}
	for _, path := range paths {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, rep, fmt.Errorf("load %s: %w", path, err)
		}
		if !fi.IsDir() {
			add(filepath.Clean(path), fi)
			continue
		}
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, rep, fmt.Errorf("load %s: %w", path, err)
		}
		found := false
		for _, e := range entries { // sorted by name
			name := e.Name()
			if strings.HasPrefix(name, ".") {
				continue
			}
			full := filepath.Join(path, name)
			if !isPolicyFile(name) {
				// Stat only to say why: an entry that cannot be read is
				// no business of the load's.
				reason := NotPolicyFile
				fi, err := os.Stat(full)
				if err == nil && fi.IsDir() {
					reason = "a directory, not searched"
				}
				skipped = append(skipped, Skipped{Path: full, Reason: reason})
				skippedFI = append(skippedFI, fi)
				continue
			}
			// Stat, not the entry's type: ConfigMap keys are symlinks.
			fi, err := os.Stat(full)
			if err != nil {
				return nil, rep, fmt.Errorf("load %s: %w", full, err)
			}
			if !fi.Mode().IsRegular() {
				rep.Skipped = append(rep.Skipped, Skipped{Path: full, Reason: ErrNotRegular.Error() + " (" + irregular(fi.Mode()) + ")"})
				continue
			}
			found = true
			add(full, fi)
		}
		if !found {
			rep.Bare = append(rep.Bare, path)
		}
	}
	// An entry read all the same, named on its own (`lint geo dir` for
	// dir/geo), was not skipped; one reached twice is listed once.
	for i, sk := range skipped {
		fi := skippedFI[i]
		same := func(r fs.FileInfo) bool { return os.SameFile(r, fi) }
		if fi != nil && (slices.ContainsFunc(seen, same) || slices.ContainsFunc(skippedFI[:i], same)) {
			continue
		}
		rep.Skipped = append(rep.Skipped, sk)
	}
	return files, rep, nil
}

// IsPolicyFile reports whether Load reads a file of a directory, so
// that a watcher can ignore changes to anything else.
func IsPolicyFile(name string) bool {
	if name == "" || name[0] == '.' {
		return false
	}
	return isPolicyFile(name)
}

func isPolicyFile(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

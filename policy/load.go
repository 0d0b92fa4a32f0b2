package policy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
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
// every key twice. The files are decoded as one set (Decode).
//
// A path that cannot be read fails the whole load with a plain error,
// and so does one named explicitly that is not a regular file (a named
// pipe, a device: ReadFile) or a file over MaxFileBytes.
func (s Scope) Load(paths ...string) ([]*ResiliencePolicy, error) {
	names, err := policyFiles(paths)
	if err != nil {
		return nil, err
	}
	files := make([]File, len(names))
	for i, name := range names {
		data, err := ReadFile(name)
		if err != nil {
			return nil, err
		}
		files[i] = File{Name: name, Data: data}
	}
	return s.Decode(files)
}

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
	m := fi.Mode()
	if m.IsRegular() {
		return nil
	}
	what := "a special file"
	switch {
	case m.IsDir():
		what = "a directory"
	case m&fs.ModeNamedPipe != 0:
		what = "a named pipe"
	case m&fs.ModeSocket != 0:
		what = "a socket"
	case m&fs.ModeCharDevice != 0:
		what = "a character device"
	case m&fs.ModeDevice != 0:
		what = "a block device"
	}
	return fmt.Errorf("load %s: %w (%s)", name, ErrNotRegular, what)
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

// policyFiles expands the paths into the files to read. A file named
// explicitly is read whatever its extension (and refused by ReadFile if
// it is not a regular file); one reached twice is read once.
func policyFiles(paths []string) ([]string, error) {
	var files []string
	seen := map[string]bool{}
	add := func(name string) {
		if !seen[name] {
			seen[name] = true
			files = append(files, name)
		}
	}
	for _, path := range paths {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", path, err)
		}
		if !fi.IsDir() {
			add(filepath.Clean(path))
			continue
		}
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", path, err)
		}
		for _, e := range entries { // sorted by name
			name := e.Name()
			if strings.HasPrefix(name, ".") || !isPolicyFile(name) {
				continue
			}
			full := filepath.Join(path, name)
			// Stat, not the entry's type: ConfigMap keys are symlinks.
			fi, err := os.Stat(full)
			if err != nil {
				return nil, fmt.Errorf("load %s: %w", full, err)
			}
			if fi.Mode().IsRegular() {
				add(full)
			}
		}
	}
	return files, nil
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

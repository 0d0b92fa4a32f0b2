package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Load reads policies from files and directories, in the order given;
// a directory contributes its .yaml, .yml and .json files in name order,
// without descending. Names that start with a dot are skipped: in a
// mounted ConfigMap they are the ..data and timestamped entries that the
// visible key symlinks point through, and reading them too would load
// every key twice.
//
// Problems of all files come back together in one ErrorList, including a
// service that a later file defines again. A path that cannot be read
// fails the whole load with a plain error.
func Load(paths ...string) ([]*ResiliencePolicy, error) {
	files, err := policyFiles(paths)
	if err != nil {
		return nil, err
	}
	var (
		all   []*ResiliencePolicy
		errs  ErrorList
		first = map[string]*ResiliencePolicy{}
	)
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", name, err)
		}
		f := decodeFile(name, data)
		for _, g := range f.good {
			if prev := first[g.p.Spec.Service]; prev != nil {
				f.errs = append(f.errs, &Error{
					File: name, Line: g.service.Line, Column: g.service.Column,
					Field: "spec.service",
					Msg:   fmt.Sprintf("service %q already has a policy at %s", g.p.Spec.Service, prev.Source),
				})
				continue
			}
			first[g.p.Spec.Service] = g.p
			all = append(all, g.p)
		}
		f.errs.sortByPosition()
		errs = append(errs, f.errs...)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return all, nil
}

// policyFiles expands the paths into the files to read. A file named
// explicitly is read whatever its extension; one reached twice is read
// once.
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

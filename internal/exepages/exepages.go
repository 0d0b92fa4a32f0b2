// Package exepages lets go of the executable's pages that only the
// process's start needed.
//
// A Go binary's text and read-only data are mapped from its file, and the
// kernel maps the page cache's pages around each one the program touches
// (fault-around). Package inits, flag parsing and the first policy load
// touch pages the sidecar's requests never touch again; they stay mapped,
// counted in its RSS, for the life of the process. Release takes them out
// of the process's page tables (madvise MADV_DONTNEED): they stay in the
// page cache, shared and reclaimable as before, and a page the process
// uses again is mapped again at its next touch, a minor fault. Only
// private read-only mappings of the executable that hold no page of the
// process's own (a copy written before it became read-only, as a
// relocated binary's RELRO segment has) are released: dropping those
// would bring back the file's bytes. docs/benchmarks.md, "The start's
// pages let go".
package exepages

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// span is a range of the address space, [start, end).
type span struct{ start, end uint64 }

// releasable returns the mappings of smaps (the text of /proc/PID/smaps)
// that Release may let go: those of the file exe, private and read-only
// (r-xp or r--p), with no anonymous page (Anonymous: 0 kB; a mapping
// without that line is kept). Private_Dirty says nothing here: it counts
// too the page cache's dirty pages of a file just written, which a
// release leaves to the page cache.
func releasable(smaps []byte, exe string) ([]span, error) {
	var (
		out  []span
		cur  span
		in   bool // cur is the executable's and read-only
		anon = -1 // cur's Anonymous in kB; -1: not seen
	)
	end := func() {
		if in && anon == 0 {
			out = append(out, cur)
		}
		in, anon = false, -1
	}
	for lineNo, line := range bytes.Split(smaps, []byte("\n")) {
		s := string(line)
		if s == "" {
			continue
		}
		name, rest, _ := strings.Cut(s, " ")
		if strings.HasSuffix(name, ":") {
			if !in || name != "Anonymous:" {
				continue
			}
			v, unit, _ := strings.Cut(strings.TrimSpace(rest), " ")
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || unit != "kB" {
				return nil, fmt.Errorf("smaps line %d: %q: want a figure in kB", lineNo+1, s)
			}
			anon = n
			continue
		}
		end()
		m, err := header(s)
		if err != nil {
			return nil, fmt.Errorf("smaps line %d: %w", lineNo+1, err)
		}
		if m.path == exe && (m.perms == "r-xp" || m.perms == "r--p") {
			cur, in = m.span, true
		}
	}
	end()
	return out, nil
}

type mapping struct {
	span
	perms, path string
}

// header reads a mapping's first line: "START-END PERMS OFFSET DEV INODE
// [PATH]", PATH being the rest of the line (it may hold spaces).
func header(s string) (mapping, error) {
	var m mapping
	var f [5]string
	rest := s
	for i := range f {
		rest = strings.TrimLeft(rest, " ")
		f[i], rest, _ = strings.Cut(rest, " ")
		if f[i] == "" {
			return m, fmt.Errorf("%q: not a mapping", s)
		}
	}
	m.perms, m.path = f[1], strings.TrimLeft(rest, " ")
	lo, hi, ok := strings.Cut(f[0], "-")
	var err1, err2 error
	m.start, err1 = strconv.ParseUint(lo, 16, 64)
	m.end, err2 = strconv.ParseUint(hi, 16, 64)
	if !ok || err1 != nil || err2 != nil || m.end <= m.start {
		return m, fmt.Errorf("%q: not a mapping's range", s)
	}
	return m, nil
}

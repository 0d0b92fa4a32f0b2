// Package memlimit gives a Go process a soft memory limit from its
// container's: the sidecar and the controller both run under a cgroup
// memory limit, and both would rather collect garbage harder near it than
// be killed by the kernel.
package memlimit

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// DefaultCgroupRoot is where the container's cgroup files are mounted.
const DefaultCgroupRoot = "/sys/fs/cgroup"

// memoryLimitPercent is the share of the container's memory limit given
// to the Go runtime as its soft limit (GOMEMLIMIT). The rest is headroom
// for what the runtime does not count (the binary's text, memory the
// kernel charges to the container for the process) and for the time the
// collector needs to catch up before the kernel's OOM killer would act.
const memoryLimitPercent = 90

// noLimit: cgroup v1 writes "no limit" as the largest page-aligned int64;
// any figure from here up is taken as none.
const noLimit = 1 << 60

// cgroupMemoryLimit reads the container's memory limit under root:
// memory.max (cgroup v2; "max" is none), else memory/memory.limit_in_bytes
// (cgroup v1). It returns 0 when there is none, with the file it read.
func cgroupMemoryLimit(root string) (limit int64, file string, err error) {
	for _, name := range []string{"memory.max", "memory/memory.limit_in_bytes"} {
		file = filepath.Join(root, name)
		b, err := os.ReadFile(file)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, file, err
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0, file, nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, file, fmt.Errorf("%s: %q is not a number of bytes", file, s)
		}
		if n <= 0 || n >= noLimit {
			return 0, file, nil
		}
		return n, file, nil
	}
	return 0, "", nil
}

// Set gives the Go runtime a soft memory limit, so that the
// collector works harder as the process nears its container's limit
// instead of the kernel killing it: GOMEMLIMIT when it is set (the
// runtime has read it), else 90% of the container's cgroup memory limit
// read under cgroupRoot, else none. It logs what it chose, and returns
// the limit in force (0: none).
func Set(cgroupRoot string, log *slog.Logger) int64 {
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		limit := debug.SetMemoryLimit(-1)
		log.Info("memory limit", "limit_bytes", limit, "from", "GOMEMLIMIT="+v)
		return limit
	}
	n, file, err := cgroupMemoryLimit(cgroupRoot)
	if err != nil {
		log.Warn("cannot read the container's memory limit: no Go memory limit set", "error", err)
		return 0
	}
	if n == 0 {
		log.Info("no container memory limit: no Go memory limit set", "cgroup_root", cgroupRoot, "file", file)
		return 0
	}
	limit := n / 100 * memoryLimitPercent
	debug.SetMemoryLimit(limit)
	log.Info("memory limit", "limit_bytes", limit, "container_limit_bytes", n, "percent", memoryLimitPercent, "from", file)
	return limit
}

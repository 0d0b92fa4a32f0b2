package sidecar

import (
	"log/slog"

	"github.com/minimesh/minimesh/internal/memlimit"
)

// DefaultCgroupRoot is where the container's cgroup files are mounted.
const DefaultCgroupRoot = memlimit.DefaultCgroupRoot

// SetMemoryLimit gives the sidecar a Go memory limit from its container's
// (internal/memlimit).
func SetMemoryLimit(cgroupRoot string, log *slog.Logger) int64 { return memlimit.Set(cgroupRoot, log) }

package exepages

import (
	"fmt"
	"os"
	"syscall"
)

// Release lets go of the executable's read-only pages mapped now (see the
// package comment) and returns the bytes of address space it let go of.
// Call it once the start is over: whatever runs after it maps again what
// it touches.
func Release() (int, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("exepages: %w", err)
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, fmt.Errorf("exepages: %w", err)
	}
	spans, err := releasable(smaps, exe)
	if err != nil {
		return 0, fmt.Errorf("exepages: /proc/self/smaps: %w", err)
	}
	n := 0
	for _, s := range spans {
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, uintptr(s.start), uintptr(s.end-s.start), syscall.MADV_DONTNEED); errno != 0 {
			return n, fmt.Errorf("exepages: madvise %#x-%#x: %w", s.start, s.end, errno)
		}
		n += int(s.end - s.start)
	}
	return n, nil
}

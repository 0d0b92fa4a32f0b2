//go:build race || msan || asan

package rawio

import (
	"syscall"
	"unsafe"
)

// Under the race detector (and the memory and address sanitizers) the
// reads and writes go through package syscall's, which tell the detector
// that a write(2) happens before the read(2) that sees its bytes, and the
// sanitizers that read(2) filled the buffer. Raw calls would hide both:
// code (tests above all) that hands state from one goroutine to another
// through a socket would be reported as racing.

func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return max(n, 0), errno(err)
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return max(n, 0), errno(err)
}

func sysPeek(fd uintptr, b *byte) (int, syscall.Errno) {
	n, _, err := syscall.Recvfrom(int(fd), unsafe.Slice(b, 1), syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return max(n, 0), errno(err)
}

func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EIO
}

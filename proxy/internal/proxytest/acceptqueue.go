package proxytest

import (
	"fmt"
	"syscall"
	"testing"
)

// FullAcceptQueue is a loopback address whose dials hang in SYN_SENT,
// and its port: its listener's accept queue is full (a backlog of 0,
// filled by connections never accepted), so the kernel drops their SYNs.
// A dial still under way when something else happens (a drain's end) is
// then a state a test can hold as long as it likes.
func FullAcceptQueue(t testing.TB) (string, int) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	sa := &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if err := syscall.Bind(fd, sa); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	got, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := got.(*syscall.SockaddrInet4).Port
	for range 3 {
		c, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Close(c) })
		_ = syscall.Connect(c, &syscall.SockaddrInet4{Addr: sa.Addr, Port: port}) // EINPROGRESS
	}
	return fmt.Sprintf("127.0.0.1:%d", port), port
}

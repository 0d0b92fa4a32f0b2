package proxytest

import (
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
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
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// A test that relies on the hang must not find a connection instead:
	// a dial that connects took a place the fills above had not taken yet
	// (kept, it fills the queue), one that times out proves the SYNs
	// dropped.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return addr, port
		}
		if err != nil {
			t.Fatalf("dialling the full listener: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		if i == 4 {
			t.Fatalf("the listener's accept queue took %d connections: SYNs are not dropped here", i+1)
		}
	}
}

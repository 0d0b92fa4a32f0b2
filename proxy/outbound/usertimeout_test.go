//go:build linux

package outbound

import (
	"context"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minimesh/minimesh/internal/netconn"
	"github.com/minimesh/minimesh/policy"
)

// TestUpstreamUserTimeout: the h2c pool's upstream sockets carry
// TCP_USER_TIMEOUT, so a black-holed upstream ends their calls (the
// sidecar PINGs an upstream only after H2UpstreamPingAfter); HTTP/1
// pools' and tunnels' sockets do not, as an HTTP/1 upstream may leave an
// upload unread (a zero window) for as long as it likes.
func TestUpstreamUserTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	d := newDialer(time.Second, nil, &selfAddrs{})
	for _, tc := range []struct {
		name string
		dial func(context.Context, string, string) (net.Conn, error)
		want time.Duration
	}{
		{"h2c pool", d.pooled(poolH2), h2UpstreamUserTimeout},
		{"HTTP/1 pool (Go's)", d.pooled(poolStd), 0},
		{"HTTP/1 pool (fast)", d.pooled(poolFast), 0},
		{"tunnel, relay", d.DialContext, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.dial(context.Background(), "tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tcp, ok := netconn.Find[*net.TCPConn](c)
			if !ok {
				t.Fatalf("no *net.TCPConn under %T", c)
			}
			rc, err := tcp.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var ms int
			var gerr error
			if err := rc.Control(func(fd uintptr) {
				ms, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
			}); err != nil || gerr != nil {
				t.Fatal(err, gerr)
			}
			if got := time.Duration(ms) * time.Millisecond; got != tc.want {
				t.Errorf("TCP_USER_TIMEOUT %v, want %v", got, tc.want)
			}
		})
	}
}

// TestClassifyKernelTimeout: a connection the kernel gave up (ETIMEDOUT:
// TCP_USER_TIMEOUT, keepalive) is a reset, as a PING unanswered was; only
// a deadline of the sidecar's is a timeout (504, gRPC DEADLINE_EXCEEDED).
func TestClassifyKernelTimeout(t *testing.T) {
	op := func(err error) error { return &net.OpError{Op: "read", Net: "tcp", Err: err} }
	for _, tc := range []struct {
		name string
		err  error
		want policy.Class
	}{
		{"ETIMEDOUT", op(os.NewSyscallError("read", syscall.ETIMEDOUT)), policy.ClassReset},
		{"ETIMEDOUT wrapped", fmt.Errorf("http2: client conn: %w", op(os.NewSyscallError("read", syscall.ETIMEDOUT))), policy.ClassReset},
		{"ECONNRESET", op(os.NewSyscallError("read", syscall.ECONNRESET)), policy.ClassReset},
		{"read deadline", op(os.ErrDeadlineExceeded), policy.ClassTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, _ := classify(tc.err, context.Background(), context.Background()); got != tc.want {
				t.Errorf("classify(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

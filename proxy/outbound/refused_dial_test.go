package outbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/policy"
)

// TestRefusedDialClass: what a try may go elsewhere for, whatever the
// policy (elsewhere): a dial the upstream's host refused or reset as the
// connection was made (before 2026-12-07 a reset dial was a connect
// failure answered 502 in about one rolling stop in fifteen on a loaded
// machine, TestRefusedEndpointRollingStop), and an endpoint
// that is the sidecar's own address; never a dial that timed out, a
// resend's refused dial (the request was written before), the sidecar's
// own want of descriptors, a stream refused unprocessed (held by its own
// rule, retried only as the policy says) nor a reset.
func TestRefusedDialClass(t *testing.T) {
	d := newDialer(time.Second, nil, newSelfAddrs())
	_, realRefusal := d.DialContext(context.Background(), "tcp", refused.Addr(t))
	if realRefusal == nil {
		t.Fatal("a dial to a refusing address succeeded")
	}
	// What a listener that closed with the connection queued gives
	// connect (net's error as a dial returns it).
	resetDial := &dialError{&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNRESET)}}
	timedOut := &dialError{&net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", realRefusal, true},
		{"the sidecar's own address as an endpoint", endpointSelf(&selfError{addr: "127.0.0.1:15001"}), true},
		{"the connection reset as it was made", resetDial, true},
		{"the dial timed out", timedOut, false},
		{"a resend's refused dial", resentFailure(nil, realRefusal, true), false},
		{"out of file descriptors", &dialError{&localError{syscall.EMFILE}}, false},
		{"an HTTP/2 stream refused unprocessed", &unprocessedError{err: errors.New(h2GotGoAway)}, false},
		{"an HTTP/2 request no connection took", &unprocessedError{err: errors.New(h2CannotRewind), unsent: true}, false},
		{"a reset", &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, false},
		{"the sidecar's own address, asked by the app", &selfError{addr: "127.0.0.1:15001"}, false},
	} {
		if got := refusedDial(tc.err); got != tc.want {
			t.Errorf("%s (%v): refusedDial %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// TestUnsent: which HTTP/2 refusals the try loop sends once more whatever
// the policy (forward.go, unsent): those no connection took, as the try
// wraps them, and none that a server sent or that followed a stream.
func TestUnsent(t *testing.T) {
	wrap := func(err error) error {
		return &upstreamError{class: policy.ClassConnectFailure, err: &unprocessedError{err: err, unsent: h2Unsent(err)}}
	}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"cannot rewind body", wrap(errors.New(h2CannotRewind)), true},
		{"client conn not established", wrap(fmt.Errorf("try: %w", errors.New(h2NotEstablished))), true},
		{"graceful GOAWAY below the stream", wrap(errors.New(h2GotGoAway)), false},
		{"REFUSED_STREAM", wrap(errors.New("stream error: stream ID 3; REFUSED_STREAM; received from peer")), false},
		{"cannot rewind, not marked by the try", &upstreamError{class: policy.ClassConnectFailure, err: errors.New(h2CannotRewind)}, false},
		{"a refused dial", &upstreamError{class: policy.ClassConnectFailure, err: &dialError{syscall.ECONNREFUSED}}, false},
		{"a reset", &upstreamError{class: policy.ClassReset, err: errors.New("http2: client connection lost")}, false},
	} {
		if got := unsent(tc.err); got != tc.want {
			t.Errorf("%s (%v): unsent %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

package outbound

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/wellknown"
)

// TestResentFailure: the failed dial of a resend of a request written
// before is the try's first failure, a reset, in the class the try loop
// retries and counts by and in the answer's kind; a dial with nothing
// written before stays a connect failure, one past the try's time a
// timeout, the sidecar's own want of descriptors its 503, and an error
// other than a dial's is left as it is.
func TestResentFailure(t *testing.T) {
	refused := &dialError{fmt.Errorf("dial tcp 127.0.0.1:1: %w", syscall.ECONNREFUSED)}
	stale := &staleError{err: io.EOF}
	for _, tc := range []struct {
		name    string
		first   error
		err     error
		written bool
		class   policy.Class
		kind    string
	}{
		{"fast: refused after a write", stale, refused, true, policy.ClassReset, wellknown.ErrorReset},
		{"std: refused after a write", nil, refused, true, policy.ClassReset, wellknown.ErrorReset},
		{"std: refused, nothing written", nil, refused, false, policy.ClassConnectFailure, wellknown.ErrorConnectFailure},
		{"dial past the per-try timeout", stale, fmt.Errorf("%w: %w", errPerTryTimeout, refused), true, policy.ClassTimeout, wellknown.ErrorTimeout},
		{"the sidecar out of descriptors", stale, &dialError{&localError{syscall.EMFILE}}, true, policy.ClassConnectFailure, wellknown.ErrorOverloaded},
		{"not a dial's", nil, errReplayedOnce, true, policy.ClassReset, wellknown.ErrorReset},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := resentFailure(tc.first, tc.err, tc.written)
			class, _ := classify(err, context.Background(), context.Background())
			if class != tc.class {
				t.Errorf("class %v, want %v (%v)", class, tc.class, err)
			}
			if _, kind, _ := errorResponse(&upstreamError{class: class, err: err}, "geo"); kind != tc.kind {
				t.Errorf("answered %q, want %q (%v)", kind, tc.kind, err)
			}
			if tc.first != nil && tc.class == policy.ClassReset && !errors.Is(err, tc.first) {
				t.Errorf("%v: not the first failure", err)
			}
		})
	}
}

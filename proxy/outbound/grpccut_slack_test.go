package outbound

import (
	"testing"
	"testing/synctest"
	"time"
)

// TestGRPCCutAtOwnDeadline: an app's reset of a call with time left is
// its cancel, but one within grpcCancelSlack of its own grpc-timeout is
// its library's deadline: the sidecar reckons that deadline from when its
// handler began, after the app sent the call, so the reset the app sends
// at its deadline may reach it that much early. On a loaded machine a
// call that ran out of time was recorded CANCELLED
// (TestGRPCClientDeadlineAfterHeaders, 1 of 8).
func TestGRPCCutAtOwnDeadline(t *testing.T) {
	const own = 250 * time.Millisecond
	for _, tc := range []struct {
		name      string
		after     time.Duration // from the handler's start to the reset
		cancelled bool
		want      int
	}{
		{"reset with time left", 100 * time.Millisecond, true, grpcCanceled},
		{"reset 40 ms before the sidecar's reckoning", own - 40*time.Millisecond, true, grpcDeadlineExceeded},
		{"reset 60 ms before", own - 60*time.Millisecond, true, grpcCanceled},
		{"reset at the deadline", own, true, grpcDeadlineExceeded},
		{"the sidecar's own abort with time left", 100 * time.Millisecond, false, grpcInternal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				st := &reqState{start: time.Now(), ownTimeout: own}
				time.Sleep(tc.after)
				if got := st.grpcCut(tc.cancelled); got != tc.want {
					t.Errorf("grpcCut(%v) after %v = %d, want %d", tc.cancelled, tc.after, got, tc.want)
				}
			})
		})
	}
}

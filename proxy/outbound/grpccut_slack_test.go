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
		own       time.Duration // the app's grpc-timeout
		after     time.Duration // from the handler's start to the reset
		cancelled bool
		want      int
	}{
		{"reset with time left", own, 100 * time.Millisecond, true, grpcCanceled},
		{"reset 40 ms before the sidecar's reckoning", own, own - 40*time.Millisecond, true, grpcDeadlineExceeded},
		{"reset 60 ms before", own, own - 60*time.Millisecond, true, grpcCanceled},
		{"reset at the deadline", own, own, true, grpcDeadlineExceeded},
		{"the sidecar's own abort with time left", own, 100 * time.Millisecond, false, grpcInternal},
		// A short deadline's slack is a fifth of it: a hedged call's loser,
		// cancelled with half its 40 ms left, is a cancel.
		{"40 ms call cancelled with 20 ms left", 40 * time.Millisecond, 20 * time.Millisecond, true, grpcCanceled},
		{"40 ms call reset 5 ms before", 40 * time.Millisecond, 35 * time.Millisecond, true, grpcDeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				st := &reqState{start: time.Now(), ownTimeout: tc.own}
				time.Sleep(tc.after)
				if got := st.grpcCut(tc.cancelled); got != tc.want {
					t.Errorf("grpcCut(%v) after %v = %d, want %d", tc.cancelled, tc.after, got, tc.want)
				}
			})
		})
	}
}

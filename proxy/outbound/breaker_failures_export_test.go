package outbound

import (
	"context"
	"testing"
	"time"
)

// SetBackoffSleep makes f the wait before every retry until the test
// ends, so that a test can hold a retry in its backoff for as long as it
// needs without a real wait (breaker_failures_test.go). Call it before the
// sidecar starts, so that the sidecar is stopped before it is restored.
func SetBackoffSleep(t testing.TB, f func(ctx context.Context, d time.Duration, deadline time.Time) bool) {
	old := backoffSleep
	backoffSleep = f
	t.Cleanup(func() { backoffSleep = old })
}

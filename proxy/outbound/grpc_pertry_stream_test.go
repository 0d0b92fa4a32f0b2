package outbound_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcstatus "google.golang.org/grpc/status"
)

// TestGRPCStreamOutlivesPerTryTimeout: perTryTimeout bounds a try up to
// its response's headers (docs/policy.md), so a server stream that
// answered within it runs on under the policy's timeout. Before
// 2026-12-07 the sidecar told the upstream perTryTimeout in grpc-timeout,
// and grpc-go's server ended the healthy stream there, after its first
// message, a failure for the app and the breaker. healthServer.Watch
// sends three messages 300 ms apart, then ends the stream itself.
func TestGRPCStreamOutlivesPerTryTimeout(t *testing.T) {
	addr := startGRPC(t, &healthServer{})
	pol := policyDoc("h", healthSvc, "timeout: 10s\nretries: {attempts: 1, perTryTimeout: 400ms, retryOn: [connect-failure]}")
	sc := startSidecar(t, pol, resolve(addr, healthSvc))
	c := grpcClient(t, sc, healthSvc)
	for _, deadline := range []time.Duration{0, 5 * time.Second} {
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if deadline > 0 {
			ctx, cancel = context.WithTimeout(ctx, deadline)
		}
		s, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		n := 0
		for {
			if _, err = s.Recv(); err != nil {
				break
			}
			n++
		}
		cancel()
		if st := grpcstatus.Convert(err); n != 3 || st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "stream over") {
			t.Errorf("client deadline %v: %d messages, then %v; want 3, then the server's own end (Unavailable: stream over)", deadline, n, err)
		}
	}
}

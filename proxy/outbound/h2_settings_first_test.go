package outbound_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// readyGRPCClient is grpcClient with its connection to the sidecar
// made: a burst of calls reaches the sidecar at once, not as that
// connection comes up.
func readyGRPCClient(t *testing.T, sc *testSidecar, authority string) healthpb.HealthClient {
	t.Helper()
	cc := grpcChannel(t, sc, authority)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc.Connect()
	for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
		if !cc.WaitForStateChange(ctx, s) {
			t.Fatalf("the app's connection to the sidecar is %v after 5s", s)
		}
	}
	return healthpb.NewHealthClient(cc)
}

// TestGRPCBurstBelowStreamLimit: a burst of calls, three times a real
// grpc-go server's stream limit, goes through the sidecar whole, on a
// cold sidecar and on one that already has a connection (so that the
// burst makes the pool dial more). Go's transport takes 100 streams on a
// connection whose SETTINGS it has not read: before each new connection's
// dial read the upstream's SETTINGS (h2Conn.handshake), the streams past
// the limit were refused (REFUSED_STREAM), each an UNAVAILABLE
// connect-failure counted by the breaker, which opened (limit 10, 30
// calls: 10 OK, 20 UNAVAILABLE).
func TestGRPCBurstBelowStreamLimit(t *testing.T) {
	for _, limit := range []uint32{1, 4, 10} {
		for _, warm := range []bool{false, true} {
			t.Run(fmt.Sprintf("limit %d warm %v", limit, warm), func(t *testing.T) {
				hs := &healthServer{delay: 200 * time.Millisecond}
				addr := startGRPC(t, hs, grpc.MaxConcurrentStreams(limit))
				// No retries: a refused call would be the app's failure.
				sc := startSidecar(t, policyDoc("health", healthSvc, "timeout: 10s\ncircuitBreaker: {consecutiveFailures: 5}\n"), resolve(addr, healthSvc))
				c := readyGRPCClient(t, sc, healthSvc)
				if warm {
					if _, err := check(c, 5*time.Second); err != nil {
						t.Fatalf("warming call: %v", err)
					}
				}
				calls := 3 * int(limit)
				errs := make(chan error, calls)
				var wg sync.WaitGroup
				for range calls {
					wg.Go(func() {
						_, err := check(c, 10*time.Second)
						errs <- err
					})
				}
				wg.Wait()
				close(errs)
				failed := 0
				for err := range errs {
					if err != nil {
						if failed == 0 {
							t.Errorf("first failure: %v", err)
						}
						failed++
					}
				}
				if failed > 0 {
					t.Errorf("%d of %d calls failed, want none", failed, calls)
				}
				if b := sc.breaker(healthSvc); b.State != "closed" || b.Counts.TotalFailures != 0 {
					t.Errorf("breaker %s with %d failures, want closed with none", b.State, b.Counts.TotalFailures)
				}
				want := int64(calls)
				if warm {
					want++
				}
				if n := hs.hits.Load(); n != want {
					t.Errorf("server processed %d calls, want %d", n, want)
				}
			})
		}
	}
}

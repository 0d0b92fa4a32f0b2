package outbound_test

// The policy's timeout ends a gRPC call whose answer's headers went to
// the app: with trailers (grpc-status 4 DEADLINE_EXCEEDED and a
// grpc-message naming minimesh) when the write side is free, also when
// the app pauses its reads, so long as its flow-control window has room;
// with a reset only when the answer's writes wait on the app
// (TestTimeoutEndsStalledReader, TestGRPCEdgeOwnDeadlineAfterPolicy).
// The write deadline that ends a blocked write (cutStalledWrites) must
// not turn the first into the second.

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcstatus "google.golang.org/grpc/status"
)

// TestGRPCTimeoutTrailers: a grpc-go client with no deadline of its own
// (it never ends the call itself) on a server stream whose upstream sends
// whole messages, then nothing, reads them and then DEADLINE_EXCEEDED
// from the sidecar's trailers at the policy's timeout, whether it reads
// as they come or only once the sidecar has recorded the call (its
// window had room: the write side never waited on it). The metric, the
// access log and the breaker record the same timeout.
func TestGRPCTimeoutTrailers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		messages int
		paused   bool // the app reads only once the call is recorded
	}{
		{"app reading", 3, false},
		{"app paused, window not full", 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startH2CUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/grpc")
				w.WriteHeader(http.StatusOK)
				for range tc.messages {
					_, _ = w.Write(servingMessage)
				}
				w.(http.Flusher).Flush()
				hang(r)
			})
			var alog accessLog
			sc := startSidecar(t, policyDoc("health", healthSvc, "timeout: 300ms\n"), resolve(up, healthSvc), withAccessLog(&alog))
			stream, err := grpcClient(t, sc, healthSvc).Watch(context.Background(), &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			var e accessEntry
			if tc.paused {
				e = alog.wait(t, 1, 10*time.Second)[0]
			}
			got := 0
			for {
				_, err = stream.Recv()
				if err != nil {
					break
				}
				got++
			}
			if got != tc.messages {
				t.Errorf("the app read %d messages, want %d", got, tc.messages)
			}
			st, _ := grpcstatus.FromError(err)
			if st.Code() != codes.DeadlineExceeded || !strings.HasPrefix(st.Message(), "minimesh: ") || !strings.Contains(st.Message(), "timeout") {
				t.Fatalf("grpc-go read %v %q, want DeadlineExceeded from the sidecar's trailers (minimesh: ... the policy's timeout ...)", st.Code(), st.Message())
			}
			if !tc.paused {
				e = alog.wait(t, 1, 10*time.Second)[0]
			}
			if e.GRPCStatus != "DEADLINE_EXCEEDED" || e.Error != "timeout" {
				t.Errorf("access log grpc_status %q error %q, want DEADLINE_EXCEEDED timeout", e.GRPCStatus, e.Error)
			}
			sc.waitMetric(1, 5*time.Second, "minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", "DEADLINE_EXCEEDED")
			if b := sc.breaker(healthSvc).Counts; b.TotalFailures != 1 {
				t.Errorf("breaker counts %+v, want the timeout's one failure", b)
			}
		})
	}
}

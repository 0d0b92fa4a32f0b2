package xds

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/minimesh/minimesh/policy/envoy"
)

// TestAnsweredRequestHeld: a state-of-the-world request that answers the
// last response of its type (its nonce) and names the same resources
// waits for the next version, whatever version it carries: an ACK
// without one (as some grpc-go clients send), an ACK of the version, a
// NACK. Each is sent three times, as a client answering every response
// at once would. Before, an ACK without a version was answered at once
// with the whole set again, and that answer ACKed the same way: 2,000
// responses in 251 ms on one stream. A request that names other
// resources is a new subscription and is answered at once.
//
// Requests on an ADS stream are handled in order, and a response the
// cache makes for one is queued before the next is read: so the RDS
// request sent after them is answered after any CDS response they got,
// and the test knows, without waiting out a time, whether they got one.
func TestAnsweredRequestHeld(t *testing.T) {
	geoCluster := envoy.ClusterName(envoy.AnyPort, "", "geo.shop.svc.cluster.local")
	for _, tc := range []struct {
		name     string
		req      func(nonce, version string) *discovery.DiscoveryRequest
		answered bool
	}{
		{"ACK without a version", func(nonce, _ string) *discovery.DiscoveryRequest {
			return &discovery.DiscoveryRequest{TypeUrl: clusterType, ResponseNonce: nonce}
		}, false},
		{"ACK of the version", func(nonce, v string) *discovery.DiscoveryRequest {
			return &discovery.DiscoveryRequest{TypeUrl: clusterType, ResponseNonce: nonce, VersionInfo: v}
		}, false},
		{"NACK", func(nonce, _ string) *discovery.DiscoveryRequest {
			return &discovery.DiscoveryRequest{TypeUrl: clusterType, ResponseNonce: nonce,
				ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "refused by the test"}}
		}, false},
		{"ACK without a version, naming a cluster", func(nonce, _ string) *discovery.DiscoveryRequest {
			return &discovery.DiscoveryRequest{TypeUrl: clusterType, ResponseNonce: nonce, ResourceNames: []string{geoCluster}}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s := NewServer(ctx, nil)
			breaker := func(n int) error {
				return s.SetNamespace("shop", pol(t, "shop", fmt.Sprintf("{service: geo, circuitBreaker: {consecutiveFailures: %d}}", n)))
			}
			if err := breaker(1); err != nil {
				t.Fatal(err)
			}
			addr, stop := serve(t, s, "127.0.0.1:0")
			defer stop()
			st, err := discovery.NewAggregatedDiscoveryServiceClient(rawConn(t, addr)).StreamAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			current := func() string {
				v, _, _ := strings.Cut(s.Version("shop"), ".")
				return v
			}
			recv := func() *discovery.DiscoveryResponse {
				t.Helper()
				r, err := st.Recv()
				if err != nil {
					t.Fatal(err)
				}
				return r
			}
			send := func(req *discovery.DiscoveryRequest) {
				t.Helper()
				if err := st.Send(req); err != nil {
					t.Fatal(err)
				}
			}

			send(&discovery.DiscoveryRequest{Node: typedNode("client-1", "shop", "web"), TypeUrl: clusterType})
			first := recv()
			if first.GetTypeUrl() != clusterType || first.GetVersionInfo() != current() {
				t.Fatalf("first response: %s version %q, want clusters version %q", first.GetTypeUrl(), first.GetVersionInfo(), current())
			}
			for range 3 {
				send(tc.req(first.GetNonce(), first.GetVersionInfo()))
			}
			send(&discovery.DiscoveryRequest{TypeUrl: routeType, ResourceNames: []string{envoy.RouteConfigName}})

			r := recv()
			if tc.answered {
				if r.GetTypeUrl() != clusterType || r.GetVersionInfo() != current() || len(r.GetResources()) != 1 {
					t.Fatalf("a request naming %s: answered with %s version %q (%d resources), want the clusters at once, version %q, one",
						geoCluster, r.GetTypeUrl(), r.GetVersionInfo(), len(r.GetResources()), current())
				}
				if r = recv(); r.GetTypeUrl() != routeType {
					t.Fatalf("after the clusters: %s, want the routes", r.GetTypeUrl())
				}
				return
			}
			if r.GetTypeUrl() != routeType {
				t.Fatalf("3 requests answering clusters version %q got %s version %q, want nothing before the next version: the routes came after",
					first.GetVersionInfo(), r.GetTypeUrl(), r.GetVersionInfo())
			}
			if err := breaker(2); err != nil {
				t.Fatal(err)
			}
			if r = recv(); r.GetTypeUrl() != clusterType || r.GetVersionInfo() != current() || r.GetVersionInfo() == first.GetVersionInfo() {
				t.Fatalf("after a change: %s version %q, want clusters version %q", r.GetTypeUrl(), r.GetVersionInfo(), current())
			}
		})
	}
}

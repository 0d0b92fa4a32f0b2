package controlplane_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/policy/envoy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

const (
	clusterType = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	routeType   = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
)

// TestServedSpecOnlyWhatIsSet is proxy/control-plane skew through the
// API server, which defaults what the CRD defaults (outlierDetection
// whole, among others): the cluster of {service: geo-service, timeout:
// 2s} carries that and nothing else, so a sidecar from before any
// defaulted field takes it. Before, the defaulted spec went whole, and
// a sidecar older than outlierDetection refused every policy. The client
// ACKs without a version, as some grpc-go clients do: it is sent the
// next version once, not the same one again at once (before, 8,000
// times a second). docs/controlplane.md, "The controller".
func TestServedSpecOnlyWhatIsSet(t *testing.T) {
	p := startPlane(t)
	p.apply(t, "shop", "geo", "{service: geo-service, timeout: 2s}")
	waitStatus(t, p, "shop", "geo", "True")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(p.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := xdsclient.Node("probe-1", "shop", "web")
	md, err := structpb.NewStruct(map[string]any{xdsclient.NamespaceKey: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	send := func(req *discovery.DiscoveryRequest) {
		t.Helper()
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() *discovery.DiscoveryResponse {
		t.Helper()
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// spec is the metadata spec of geo-service's cluster in r.
	spec := func(r *discovery.DiscoveryResponse) map[string]any {
		t.Helper()
		for _, a := range r.GetResources() {
			var c clusterv3.Cluster
			if err := a.UnmarshalTo(&c); err != nil {
				t.Fatal(err)
			}
			m := c.GetMetadata().GetFilterMetadata()[envoy.MetadataKey].AsMap()
			if m["service"] == "geo-service" {
				s, _ := m["spec"].(map[string]any)
				return s
			}
		}
		t.Fatalf("no cluster for geo-service in version %q", r.GetVersionInfo())
		return nil
	}

	send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: n.ID, Cluster: n.Cluster, Metadata: md}, TypeUrl: clusterType})
	first := recv()
	if got, want := spec(first), map[string]any{"service": "geo-service", "timeout": "2s"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("served spec %v, want only what was set: %v", got, want)
	}

	// Requests on an ADS stream are handled in order, and a response
	// made for one is queued before the next is read: the routes asked
	// for after the ACKs come after any clusters the ACKs got.
	for range 3 {
		send(&discovery.DiscoveryRequest{TypeUrl: clusterType, ResponseNonce: first.GetNonce()})
	}
	send(&discovery.DiscoveryRequest{TypeUrl: routeType, ResourceNames: []string{envoy.RouteConfigName}})
	if r := recv(); r.GetTypeUrl() != routeType {
		t.Fatalf("ACKs without a version of clusters %q were answered with %s version %q, want nothing until the next version", first.GetVersionInfo(), r.GetTypeUrl(), r.GetVersionInfo())
	}
	p.apply(t, "shop", "geo", "{service: geo-service, timeout: 3s}")
	next := recv()
	if next.GetTypeUrl() != clusterType || next.GetVersionInfo() == first.GetVersionInfo() {
		t.Fatalf("after a change: %s version %q, want the next clusters version (not %q)", next.GetTypeUrl(), next.GetVersionInfo(), first.GetVersionInfo())
	}
	if got := spec(next)["timeout"]; got != "3s" {
		t.Fatalf("after a change: timeout %v, want 3s", got)
	}
}

package xds

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestDeltaEndpoints: an Envoy on incremental ADS gets the endpoints too
// (the cache hashes each resource's encoding for its versions: the
// endpoints held encoded serve that as well).
func TestDeltaEndpoints(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	if err := s.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetEndpoints(endpointsOf("10.0.0.1:8080", "10.0.0.2:8080")); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	sctx, end := context.WithTimeout(ctx, 10*time.Second)
	defer end()
	delta, err := discovery.NewAggregatedDiscoveryServiceClient(rawConn(t, addr)).DeltaAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(map[string]any{"namespace": "shop"})
	const edsType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	if err := delta.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "shop/envoy-1", Metadata: md}, TypeUrl: edsType}); err != nil {
		t.Fatal(err)
	}
	resp, err := delta.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != geoName {
		t.Fatalf("delta EDS: %v", resp.GetResources())
	}
	var cla endpointv3.ClusterLoadAssignment
	if err := resp.GetResources()[0].GetResource().UnmarshalTo(&cla); err != nil {
		t.Fatal(err)
	}
	if cla.GetClusterName() != geoName || len(cla.GetEndpoints()) != 1 || len(cla.GetEndpoints()[0].GetLbEndpoints()) != 2 {
		t.Fatalf("delta EDS decoded %v", &cla)
	}
}

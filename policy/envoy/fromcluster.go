package envoy

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/policy"
)

// DefaultsClusterName carries the "*" policy over xDS: a cluster without
// endpoints whose only content is the metadata. Envoy users never route to
// it; minimesh sidecars read their defaults from it.
const DefaultsClusterName = "minimesh|defaults"

// DefaultsCluster is the cluster of the "*" policy p.
func DefaultsCluster(p *policy.ResiliencePolicy) (*clusterv3.Cluster, error) {
	spec, err := specMap(p)
	if err != nil {
		return nil, err
	}
	meta := map[string]any{"policy": p.Metadata.Name, "service": p.Spec.Service, "spec": spec}
	if p.Metadata.Namespace != "" {
		meta["namespace"] = p.Metadata.Namespace
	}
	st, err := structpb.NewStruct(meta)
	if err != nil {
		return nil, err
	}
	c := &clusterv3.Cluster{
		Name:                 DefaultsClusterName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LoadAssignment:       &endpointv3.ClusterLoadAssignment{ClusterName: DefaultsClusterName},
		Metadata:             &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: st}},
	}
	return c, c.Validate()
}

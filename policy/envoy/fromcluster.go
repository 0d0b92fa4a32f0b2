package envoy

import (
	"encoding/json"
	"errors"
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/policy"
)

// FromCluster rebuilds the policy that Translate put into a cluster, and
// checks it as the decoder checks a file: a resource from a control plane
// is input like any other.
func FromCluster(c *clusterv3.Cluster) (*policy.ResiliencePolicy, error) {
	md := c.GetMetadata().GetFilterMetadata()[MetadataKey]
	if md == nil {
		return nil, fmt.Errorf("cluster %s: no %s metadata", c.GetName(), MetadataKey)
	}
	m := md.AsMap()
	spec, ok := m["spec"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("cluster %s: metadata %s has no spec", c.GetName(), MetadataKey)
	}
	name, _ := m["policy"].(string)
	ns, _ := m["namespace"].(string)
	doc, err := json.Marshal(map[string]any{
		"apiVersion": policy.APIVersion, "kind": policy.Kind,
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	})
	if err != nil {
		return nil, err
	}
	pols, err := policy.Decode("xds cluster "+c.GetName(), doc)
	if err != nil {
		return nil, err
	}
	if len(pols) != 1 {
		return nil, errors.New("cluster " + c.GetName() + ": want one policy")
	}
	return pols[0], nil
}

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

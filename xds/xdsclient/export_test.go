package xdsclient

import "github.com/minimesh/minimesh/policy"

// ClusterMetadata is a cluster's name and filter_metadata[MetadataKey] as
// FromCluster reads them, for the tests of package xdsclient_test (which
// may import policy/envoy: policy/envoy imports this package).
func ClusterMetadata(b []byte) (name string, md map[string]any, err error) {
	var c cluster
	err = c.unmarshal(b)
	return c.name, c.md, err
}

// DecodeClusters decodes the clusters of a CDS response as the client
// does, and returns how many policies they held.
func DecodeClusters(clusters [][]byte) (int, error) {
	rs := make([]resource, len(clusters))
	for i, b := range clusters {
		rs[i] = resource{clusterType, b}
	}
	pols, _, err := decode(rs)
	return len(pols), err
}

// decode turns a CDS response into policies as the client does with no
// earlier set (decodeClusters), the hash of its content, and either
// refusal: the whole response's, or that of the clusters left out.
func decode(resources []resource) ([]*policy.ResiliencePolicy, string, error) {
	d := decodeClusters(resources, nil)
	err := d.whole
	if err == nil {
		err = d.refused
	}
	return d.pols, contentHash(resources), err
}

// MetadataValues is how many values the minimesh metadata of cluster b
// holds, as counted against MaxClusterValues, and its size as counted
// against MaxMetadataBytes.
func MetadataValues(b []byte) (values, size int, err error) {
	var c cluster
	values, err = c.unmarshalBounded(b, MaxClusterValues)
	return values, c.mdBytes, err
}

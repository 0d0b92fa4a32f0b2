package xdsclient

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

// MetadataValues is how many values the minimesh metadata of cluster b
// holds, as counted against MaxClusterValues, and its size as counted
// against MaxMetadataBytes.
func MetadataValues(b []byte) (values, size int, err error) {
	var c cluster
	values, err = c.unmarshalBounded(b, MaxClusterValues)
	return values, c.mdBytes, err
}

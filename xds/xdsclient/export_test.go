package xdsclient

// ClusterMetadata is a cluster's name and filter_metadata[MetadataKey] as
// FromCluster reads them, for the tests of package xdsclient_test (which
// may import policy/envoy: policy/envoy imports this package).
func ClusterMetadata(b []byte) (name string, md map[string]any, err error) {
	var c cluster
	err = c.unmarshal(b)
	return c.name, c.md, err
}

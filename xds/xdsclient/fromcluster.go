package xdsclient

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/minimesh/minimesh/policy"
)

// MetadataKey is the filter_metadata namespace in which policy/envoy
// puts the whole policy (the two are held equal by a test).
const MetadataKey = "minimesh.io"

// FromCluster rebuilds the policy that Translate put into a cluster (its
// encoding), and checks it as the decoder checks a file (a resource from
// a control plane is input like any other), but for fields it does not
// know, which it leaves out: a newer controller's (docs/controlplane.md,
// "Versions and skew").
func FromCluster(b []byte) (*policy.ResiliencePolicy, error) {
	var c cluster
	if err := c.unmarshal(b); err != nil {
		return nil, err
	}
	p, _, err := fromCluster(&c)
	return p, err
}

// fromCluster is FromCluster of a decoded cluster; unknown are the paths
// of the spec's fields left out (policy.DecodeTolerant).
func fromCluster(c *cluster) (_ *policy.ResiliencePolicy, unknown []string, err error) {
	m := c.md
	if m == nil {
		return nil, nil, fmt.Errorf("cluster %s: no %s metadata", c.name, MetadataKey)
	}
	spec, ok := m["spec"].(map[string]any)
	if !ok {
		return nil, nil, fmt.Errorf("cluster %s: metadata %s has no spec", c.name, MetadataKey)
	}
	name, _ := m["policy"].(string)
	ns, _ := m["namespace"].(string)
	// One value a line: yaml.v3's scanner keeps every token of a line
	// queued while a key on it may still turn out to be a simple key (up
	// to 1,024 bytes), and grows and shifts that queue at each key: the
	// whole policy on one line cost 85 to 145 KB of allocation, two thirds
	// of it that queue (BenchmarkFromCluster, docs/benchmarks.md). The
	// same JSON across lines reads the same, and only the line:col of an
	// error in this document, which no one has, differs.
	doc, err := json.MarshalIndent(map[string]any{
		"apiVersion": policy.APIVersion, "kind": policy.Kind,
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	}, "", " ")
	if err != nil {
		return nil, nil, fmt.Errorf("cluster %s: %w", c.name, err)
	}
	pols, unknown, err := policy.DecodeTolerant("xds cluster "+c.name, doc)
	if err != nil {
		return nil, unknown, err
	}
	if len(pols) != 1 {
		return nil, unknown, errors.New("cluster " + c.name + ": want one policy")
	}
	return pols[0], unknown, nil
}

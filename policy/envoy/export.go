package envoy

import (
	"bytes"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/policy"
)

// Export prints the resources of pols as Envoy v3 YAML: each Cluster, then
// the RouteConfiguration, in the field names of Envoy's documentation.
func Export(pols []*policy.ResiliencePolicy, ns string) ([]byte, error) {
	res, err := Translate(pols, ns)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	for _, s := range res.Skipped {
		fmt.Fprintf(&out, "# skipped: %s\n", s)
	}
	for _, s := range res.Notes {
		fmt.Fprintf(&out, "# not carried over: %s\n", s)
	}
	write := func(kind string, m proto.Message) error {
		js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			return err
		}
		y, err := yaml.JSONToYAML(js)
		if err != nil {
			return err
		}
		fmt.Fprintf(&out, "---\n# envoy.config.%s\n", kind)
		out.Write(y)
		return nil
	}
	for _, c := range res.Clusters {
		if err := write("cluster.v3.Cluster", c); err != nil {
			return nil, err
		}
	}
	if len(res.Routes.VirtualHosts) > 0 {
		if err := write("route.v3.RouteConfiguration", res.Routes); err != nil {
			return nil, err
		}
	}
	return out.Bytes(), nil
}

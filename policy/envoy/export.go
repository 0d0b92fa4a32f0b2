package envoy

import (
	"bytes"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/policy"
)

// Export prints the resources that the proxies of namespace ns are served
// from pols as Envoy v3 YAML: each Cluster, then the RouteConfiguration,
// in the field names of Envoy's documentation. pols are what the control
// plane serves ns's proxies: ns's own policies and the cluster-wide ones
// (xds.Merge), never another namespace's, which the caller leaves out
// (the export command says so). They are read as the control plane reads
// them for ns (TranslateFor): a short name is a Service of ns, and only
// a Service of ns is claimed by its bare name, whichever namespace a
// policy was written in; Translate, which resolved each policy in its
// own namespace, gave ns's proxies the bare name of another namespace's
// Service. opts are the export's own choices (Options).
func Export(pols []*policy.ResiliencePolicy, ns string, opts Options) ([]byte, error) {
	res, err := TranslateForWith(pols, ns, opts)
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

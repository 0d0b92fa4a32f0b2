package envoy

import (
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// metadataSpecs are specs whose defaults the decoder fills field by
// field, derived bounds included, for TestMetadataSpecDecodesToSpec and
// TestMetadataSpecOnlyWritten.
var metadataSpecs = []string{
	"{service: geo}",
	"{service: geo, timeout: 2s}",
	`{service: "*", timeout: 3s}`,
	`{service: "*"}`,
	"{service: geo, retries: {attempts: 0}}",
	"{service: geo, retries: {attempts: 2, perTryTimeout: 500ms}}",
	"{service: geo, retries: {attempts: 2, retryOn: [connect-failure, reset, gateway-error]}}",
	"{service: geo, retries: {attempts: 2, retryOn: [connect-failure, reset, gateway-error, 429]}}",
	"{service: geo, retries: {attempts: 2, retryOn: [grpc-unavailable]}}",
	"{service: geo, retries: {attempts: 2, backoff: {base: 1s}}}",
	"{service: geo, retries: {attempts: 2, backoff: {max: 10ms}}}",
	"{service: geo, retries: {attempts: 2, backoff: {base: 25ms, max: 1s}}}",
	"{service: geo, retries: {attempts: 2, backoff: {base: 25ms, max: 250ms}}}",
	"{service: geo, retries: {attempts: 2, backoff: {base: 250ms}}}",
	"{service: geo, retries: {attempts: 2, budget: {ratio: 0.5}}}",
	"{service: geo, retries: {attempts: 2, budget: {minPerSecond: 10}}}",
	"{service: geo, circuitBreaker: {}}",
	"{service: geo, circuitBreaker: {consecutiveFailures: 5, openTimeout: 60s, halfOpenRequests: 2}}",
	"{service: geo, circuitBreaker: {consecutiveFailures: 3}}",
	"{service: geo, circuitBreaker: {openTimeout: 10s, halfOpenRequests: 1}}",
	"{service: geo, circuitBreaker: {failOn: [5xx, connect-failure, reset, timeout]}}",
	"{service: geo, circuitBreaker: {failOn: [5xx, connect-failure, reset, timeout, 429]}}",
	"{service: geo, circuitBreaker: {failOn: [grpc-unavailable, grpc-internal]}}",
	"{service: geo, circuitBreaker: {failureRate: {threshold: 0.5, minRequests: 20, window: 10s}}}",
	"{service: geo, outlierDetection: {}}",
	"{service: geo, outlierDetection: {consecutiveFailures: 0}}",
	"{service: geo, outlierDetection: {consecutiveFailures: 5, baseEjectionTime: 30s, maxEjectionTime: 300s, maxEjectionPercent: 50}}",
	"{service: geo, outlierDetection: {baseEjectionTime: 10m}}",
	"{service: geo, outlierDetection: {baseEjectionTime: 5m}}",
	"{service: geo, outlierDetection: {maxEjectionTime: 10s}}",
	"{service: geo, outlierDetection: {maxEjectionTime: 30s}}",
	"{service: geo, outlierDetection: {baseEjectionTime: 30s, maxEjectionTime: 1h}}",
	"{service: geo, outlierDetection: {baseEjectionTime: 1s, maxEjectionPercent: 100}}",
	"{service: geo, outlierDetection: {baseEjectionTime: 1ms, maxEjectionTime: 24h}}",
	`{service: "geo:8080", timeout: 2s, retries: {attempts: 3, perTryTimeout: 1s, retryOn: [5xx], backoff: {base: 50ms, max: 2s}, budget: {ratio: 0.1, minPerSecond: 3}},
	  circuitBreaker: {consecutiveFailures: 7, openTimeout: 30s, halfOpenRequests: 4, failOn: [gateway-error, timeout]},
	  outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 10s, maxEjectionTime: 2m, maxEjectionPercent: 30}}`,
}

// decodeEach decodes metadataSpecs one by one (most share a service).
func decodeEach(t *testing.T) []*policy.ResiliencePolicy {
	t.Helper()
	var pols []*policy.ResiliencePolicy
	for _, s := range metadataSpecs {
		pols = append(pols, decodeYAML(t, s)...)
	}
	return pols
}

// metadataSpec is what a sidecar is served of p: the "spec" of its
// cluster's metadata, and the cluster on the wire.
func metadataSpec(t *testing.T, p *policy.ResiliencePolicy) (map[string]any, []byte) {
	t.Helper()
	var c *clusterv3.Cluster
	if p.Spec.Service == policy.DefaultService {
		var err error
		if c, err = DefaultsCluster(p); err != nil {
			t.Fatal(err)
		}
	} else {
		res, err := TranslateFor([]*policy.ResiliencePolicy{p}, "shop")
		if err != nil {
			t.Fatal(err)
		}
		c = res.Clusters[0]
	}
	b, err := proto.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := c.Metadata.FilterMetadata[MetadataKey].AsMap()["spec"].(map[string]any)
	return spec, b
}

// TestMetadataSpecDecodesToSpec: the spec a sidecar decodes from a
// cluster's metadata is the controller's defaulted spec, field for
// field, though the metadata leaves the defaults out: for the table and
// for every good policy of the decoder's tests.
func TestMetadataSpecDecodesToSpec(t *testing.T) {
	pols := decodeEach(t)
	files, err := filepath.Glob("../testdata/good/*")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../linkerd/testdata/policies.yaml", "testdata/collisions.yaml")
	for _, f := range files {
		pols = append(pols, decodeFile(t, f)...)
	}
	for _, p := range pols {
		_, b := metadataSpec(t, p)
		got, err := xdsclient.FromCluster(b)
		if err != nil {
			t.Fatalf("%s (%s): %v", p.Metadata.Name, p.Source, err)
		}
		if !reflect.DeepEqual(got.Spec, p.Spec) {
			t.Errorf("%s (%s): the sidecar decodes\n%+v\nwant\n%+v", p.Metadata.Name, p.Source, got.Spec, p.Spec)
		}
	}
}

// TestMetadataSpecOnlyWritten is proxy/control-plane skew: a sidecar
// refuses a spec with a field it does not know, so a policy that does
// not write a field (one added after some sidecar was built, as
// outlierDetection was) must not carry it, defaults or not. Every path
// of the metadata's spec is one the policy wrote; a derived bound
// (backoff's, the ejection times) comes with its partner.
func TestMetadataSpecOnlyWritten(t *testing.T) {
	partner := map[string]string{
		"retries.backoff.base": "retries.backoff.max", "retries.backoff.max": "retries.backoff.base",
		"outlierDetection.baseEjectionTime": "outlierDetection.maxEjectionTime",
		"outlierDetection.maxEjectionTime":  "outlierDetection.baseEjectionTime",
	}
	for i, p := range decodeEach(t) {
		var written map[string]any
		if err := yaml.Unmarshal([]byte(metadataSpecs[i]), &written); err != nil {
			t.Fatal(err)
		}
		spec, _ := metadataSpec(t, p)
		allowed := map[string]bool{}
		for _, path := range paths("", written) {
			allowed[path] = true
			allowed[partner[path]] = true
		}
		for _, path := range paths("", spec) {
			if !allowed[path] {
				t.Errorf("%s: the metadata carries %s, which the policy does not write: %v", metadataSpecs[i], path, spec)
			}
		}
	}
	// The probe's case, exactly: an older sidecar refused it for
	// outlierDetection and fell back to its defaults.
	spec, _ := metadataSpec(t, decodeYAML(t, "{service: geo, timeout: 2s}")[0])
	if want := map[string]any{"service": "geo", "timeout": "2s"}; !reflect.DeepEqual(spec, want) {
		t.Errorf("metadata spec of {service: geo, timeout: 2s} = %v, want %v", spec, want)
	}
}

// paths lists the leaves of m as dotted paths, a list being a leaf.
func paths(prefix string, m map[string]any) []string {
	var out []string
	for k, v := range m {
		path := strings.TrimPrefix(prefix+"."+k, ".")
		if sub, ok := v.(map[string]any); ok && len(sub) > 0 {
			out = append(out, paths(path, sub)...)
			continue
		}
		out = append(out, path)
	}
	sort.Strings(out)
	return out
}

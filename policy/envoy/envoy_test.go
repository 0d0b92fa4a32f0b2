package envoy

import (
	"flag"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

func TestMetadataKey(t *testing.T) {
	if MetadataKey != xdsclient.MetadataKey {
		t.Fatalf("translate writes %q, the sidecar reads %q", MetadataKey, xdsclient.MetadataKey)
	}
}

var update = flag.Bool("update", false, "rewrite testdata/*.golden.yaml")

func load(t *testing.T) []*policy.ResiliencePolicy {
	t.Helper()
	data, err := os.ReadFile("../linkerd/testdata/policies.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pols, err := policy.Decode("policies.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	return pols
}

func TestGolden(t *testing.T) {
	got, err := Export(load(t), "default")
	if err != nil {
		t.Fatal(err)
	}
	const golden = "testdata/envoy.golden.yaml"
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("%s differs (go test ./policy/envoy -update):\n%s", golden, got)
	}
}

// TestExportReadsBack parses the printed YAML back into Envoy's types,
// strictly, and validates each: what users copy into an Envoy config is
// what Envoy accepts.
func TestExportReadsBack(t *testing.T) {
	out, err := Export(load(t), "default")
	if err != nil {
		t.Fatal(err)
	}
	var clusters, routes int
	for _, doc := range strings.Split(string(out), "\n---\n") {
		if !strings.Contains(doc, "\nname:") && !strings.HasPrefix(doc, "name:") {
			continue
		}
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.Contains(doc, "# envoy.config.cluster.v3.Cluster"):
			var c clusterv3.Cluster
			if err := protojson.Unmarshal(js, &c); err != nil {
				t.Fatalf("cluster: %v\n%s", err, doc)
			}
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			clusters++
		case strings.Contains(doc, "# envoy.config.route.v3.RouteConfiguration"):
			var r routev3.RouteConfiguration
			if err := protojson.Unmarshal(js, &r); err != nil {
				t.Fatalf("routes: %v\n%s", err, doc)
			}
			if err := r.Validate(); err != nil {
				t.Fatal(err)
			}
			routes++
		}
	}
	if clusters != 3 || routes != 1 {
		t.Fatalf("%d clusters and %d route configurations, want 3 and 1", clusters, routes)
	}
}

func TestTranslate(t *testing.T) {
	res, err := Translate(load(t), "default")
	if err != nil {
		t.Fatal(err)
	}
	var geo *clusterv3.Cluster
	for _, c := range res.Clusters {
		if c.Name == "outbound|8000||nominatim-service.bakery-ia.svc.cluster.local" {
			geo = c
		}
	}
	if geo == nil {
		t.Fatalf("no nominatim cluster in %v", res.Clusters)
	}
	od := geo.OutlierDetection
	if od.Consecutive_5Xx.GetValue() != 5 || od.ConsecutiveLocalOriginFailure.GetValue() != 5 || !od.SplitExternalLocalOriginErrors ||
		od.BaseEjectionTime.AsDuration().Seconds() != 60 || od.FailurePercentageThreshold.GetValue() != 50 {
		t.Fatalf("outlier detection %v", od)
	}
	if b := geo.CircuitBreakers.Thresholds[0].RetryBudget; b.BudgetPercent.Value != 20 || b.MinRetryConcurrency.GetValue() != 10 {
		t.Fatalf("retry budget %v", b)
	}
	md := geo.Metadata.FilterMetadata[MetadataKey].AsMap()
	if cb := md["circuitBreaker"].(map[string]any); cb["halfOpenRequests"] != float64(2) {
		t.Fatalf("halfOpenRequests not carried in metadata: %v", md)
	}
	var vh *routev3.VirtualHost
	for _, v := range res.Routes.VirtualHosts {
		if v.Name == geo.Name {
			vh = v
		}
	}
	for _, d := range []string{"nominatim-service:8000", "nominatim-service.bakery-ia:8000", "nominatim-service.bakery-ia.svc.cluster.local:8000"} {
		if !slices.Contains(vh.Domains, d) {
			t.Errorf("domains %v lack %s", vh.Domains, d)
		}
	}
	rp := vh.Routes[0].GetRoute().RetryPolicy
	if rp.RetryOn != "connect-failure,retriable-status-codes" || rp.NumRetries.GetValue() != 2 || !slices.Equal(rp.RetriableStatusCodes, []uint32{429, 502, 503, 504}) ||
		rp.PerTryTimeout.AsDuration().Milliseconds() != 500 || len(rp.RetriableRequestHeaders) != 7 {
		t.Fatalf("retry policy %v", rp)
	}
	if to := vh.Routes[0].GetRoute().Timeout.AsDuration(); to.Seconds() != 2 {
		t.Fatalf("timeout %v", to)
	}
	if len(res.Skipped) != 1 || !strings.Contains(res.Skipped[0], "everything") {
		t.Fatalf("skipped %v, want the \"*\" policy", res.Skipped)
	}
}

// TestFromClusterRoundTrip: what a sidecar rebuilds from a cluster is the
// policy that went in, for every policy including the defaults.
func TestFromClusterRoundTrip(t *testing.T) {
	pols := load(t)
	res, err := Translate(pols, "default")
	if err != nil {
		t.Fatal(err)
	}
	clusters := res.Clusters
	for _, p := range pols {
		if p.Spec.Service == policy.DefaultService {
			c, err := DefaultsCluster(p)
			if err != nil {
				t.Fatal(err)
			}
			clusters = append(clusters, c)
		}
	}
	if len(clusters) != len(pols) {
		t.Fatalf("%d clusters for %d policies", len(clusters), len(pols))
	}
	for _, c := range clusters {
		got, err := xdsclient.FromCluster(c)
		if err != nil {
			t.Fatal(err)
		}
		var want *policy.ResiliencePolicy
		for _, p := range pols {
			if p.Metadata.Name == got.Metadata.Name {
				want = p
			}
		}
		if want == nil || !reflect.DeepEqual(got.Spec, want.Spec) || got.Metadata != want.Metadata {
			t.Fatalf("cluster %s: got %+v, want %+v", c.Name, got, want)
		}
	}
}

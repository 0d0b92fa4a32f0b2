package envoy

import (
	"flag"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

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
	got, err := Export(load(t), "bakery-ia", Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "testdata/envoy.golden.yaml", got)
}

// checkGolden compares got with the golden file, after writing it there
// with -update.
func checkGolden(t *testing.T, golden string, got []byte) {
	t.Helper()
	if *update {
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
	out, err := Export(load(t), "bakery-ia", Options{})
	if err != nil {
		t.Fatal(err)
	}
	clusters, routes := readBack(t, out)
	if len(clusters) != 3 || len(routes) != 1 {
		t.Fatalf("%d clusters and %d route configurations, want 3 and 1", len(clusters), len(routes))
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
	if od.Consecutive_5Xx.GetValue() != 3 || od.ConsecutiveLocalOriginFailure.GetValue() != 3 || !od.SplitExternalLocalOriginErrors ||
		od.BaseEjectionTime.AsDuration() != 1500*time.Millisecond || od.MaxEjectionTime.AsDuration() != 2*time.Minute ||
		od.MaxEjectionPercent.GetValue() != 34 || od.Interval.AsDuration() != time.Second ||
		od.EnforcingConsecutive_5Xx.GetValue() != 100 || od.EnforcingConsecutiveLocalOriginFailure.GetValue() != 100 ||
		od.EnforcingSuccessRate.GetValue() != 0 || od.EnforcingFailurePercentage.GetValue() != 0 || od.FailurePercentageThreshold != nil {
		t.Fatalf("outlier detection %v", od)
	}
	for _, c := range res.Clusters {
		if strings.Contains(c.Name, "auth.identity") && c.OutlierDetection != nil {
			t.Errorf("auth has outlierDetection off, got %v", c.OutlierDetection)
		}
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
	// Idempotent requests and those with an Idempotency-Key are retried
	// on all of retryOn, any other only when never sent
	// (retryRoutes; TestRetryRoutesFollowTheSidecar).
	if len(vh.Routes) != 3 || vh.Routes[0].Name != routeIdempotent || vh.Routes[1].Name != routeIdempotencyKey || vh.Routes[2].Name != routeOther {
		t.Fatalf("routes %v, want idempotent-method, idempotency-key, other", vh.Routes)
	}
	for i, want := range []string{"connect-failure,refused-stream,retriable-status-codes", "connect-failure,refused-stream,retriable-status-codes", "connect-failure,refused-stream"} {
		rp := vh.Routes[i].GetRoute().RetryPolicy
		codes := []uint32{429, 502, 503, 504}
		if i == 2 {
			codes = nil
		}
		if rp.RetryOn != want || rp.NumRetries.GetValue() != 2 || !slices.Equal(rp.RetriableStatusCodes, codes) ||
			rp.PerTryTimeout.AsDuration().Milliseconds() != 500 || len(rp.RetriableRequestHeaders) != 0 {
			t.Fatalf("route %s: retry policy %v", vh.Routes[i].Name, rp)
		}
		if to := vh.Routes[i].GetRoute().Timeout.AsDuration(); to.Seconds() != 2 {
			t.Fatalf("route %s: timeout %v", vh.Routes[i].Name, to)
		}
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
		b, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := xdsclient.FromCluster(b)
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

// TestOutlier: which of Envoy's detectors counts, by failOn; every other
// one is written out unenforced.
func TestOutlier(t *testing.T) {
	od := policy.DefaultOutlierDetection()
	type want struct {
		c5xx, gateway, local uint32 // the enforced runs' lengths, 0 for unenforced
		split                bool
		notes                int
	}
	for _, tt := range []struct {
		failOn []string
		want   *want
	}{
		{[]string{"5xx", "connect-failure", "reset", "timeout"}, &want{c5xx: 5}},
		{[]string{"gateway-error", "connect-failure", "reset", "timeout"}, &want{gateway: 5}},
		{[]string{"5xx"}, &want{c5xx: 5, split: true}},
		{[]string{"5xx", "connect-failure"}, &want{c5xx: 5, local: 5, split: true, notes: 1}},
		{[]string{"connect-failure", "reset", "timeout"}, &want{local: 5, split: true}},
		{[]string{"connect-failure"}, &want{local: 5, split: true, notes: 1}},
		{[]string{"5xx", "503", "429"}, &want{c5xx: 5, split: true, notes: 1}},
		{[]string{"429"}, nil},
		{[]string{"grpc-unavailable"}, nil},
	} {
		var failOn policy.Conditions
		for _, item := range tt.failOn {
			c, code, err := policy.ParseCondition(item)
			if err != nil {
				t.Fatal(err)
			}
			failOn.Add(c, code)
		}
		o, notes := outlier("p", od, failOn)
		if tt.want == nil {
			if o != nil || len(notes) == 0 {
				t.Errorf("%v: got %v %q, want none and a note", tt.failOn, o, notes)
			}
			continue
		}
		enforced := func(n, enforcing interface{ GetValue() uint32 }) uint32 {
			if enforcing.GetValue() != 100 {
				return 0
			}
			return n.GetValue()
		}
		got := want{
			c5xx:    enforced(o.Consecutive_5Xx, o.EnforcingConsecutive_5Xx),
			gateway: enforced(o.ConsecutiveGatewayFailure, o.EnforcingConsecutiveGatewayFailure),
			local:   enforced(o.ConsecutiveLocalOriginFailure, o.EnforcingConsecutiveLocalOriginFailure),
			split:   o.SplitExternalLocalOriginErrors,
		}
		for _, n := range notes {
			// The ejection count's pace is another matter
			// (TestOutlierEjectsOne), noted for every 30s base.
			if !strings.Contains(n, "ejection count") {
				got.notes++
			}
		}
		if got != *tt.want {
			t.Errorf("%v: got %+v, want %+v (notes %q)", tt.failOn, got, *tt.want, notes)
		}
		for _, e := range []interface{ GetValue() uint32 }{o.EnforcingSuccessRate, o.EnforcingLocalOriginSuccessRate, o.EnforcingFailurePercentage, o.EnforcingFailurePercentageLocalOrigin} {
			if e.GetValue() != 0 {
				t.Errorf("%v: a rate detector is enforced: %v", tt.failOn, o)
			}
		}
		if err := o.Validate(); err != nil {
			t.Error(err)
		}
	}
	if o, notes := outlier("p", &policy.OutlierDetection{}, policy.DefaultFailOn); o != nil || notes != nil {
		t.Errorf("ejection off: %v %q", o, notes)
	}
}

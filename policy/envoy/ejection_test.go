package envoy

import (
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/minimesh/minimesh/policy"
)

// TestOutlierEjectsOne: minimesh may always eject one endpoint, whatever
// maxEjectionPercent says (docs/policy.md); Envoy ejects past
// max_ejection_percent only with always_eject_one_host, which defaults
// to false, so a Service of one or two pods at 50 % never ejected. And a
// STRICT_DNS cluster on a Service's name is one host, its ClusterIP: per
// pod ejection needs the pods, which --eds takes from the controller
// (EDS over ADS, under the names the controller serves).
func TestOutlierEjectsOne(t *testing.T) {
	for _, tt := range []struct {
		name, service string
		eds           bool
		wantType      clusterv3.Cluster_DiscoveryType
		edsName       string // EDS service_name, "" for none
		strictNote    bool   // the STRICT_DNS note
	}{
		{"Service, STRICT_DNS", "geo.shop:8000", false, clusterv3.Cluster_STRICT_DNS, "", true},
		{"Service, EDS", "geo.shop:8000", true, clusterv3.Cluster_EDS, "geo.shop.svc.cluster.local:8000", false},
		{"short name, EDS", "geo", true, clusterv3.Cluster_EDS, "geo.shop.svc.cluster.local:80", false},
		{"external host, EDS asked", "api.example.com:443", true, clusterv3.Cluster_STRICT_DNS, "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pols := decodeYAML(t, "{service: "+tt.service+", outlierDetection: {consecutiveFailures: 3, maxEjectionPercent: 50}}")
			res, err := TranslateForWith(pols, "shop", Options{EDS: tt.eds})
			if err != nil {
				t.Fatal(err)
			}
			c := res.Clusters[0]
			if !c.GetOutlierDetection().GetAlwaysEjectOneHost().GetValue() {
				t.Errorf("always_eject_one_host unset: at 50%% of one or two hosts Envoy ejects none, minimesh one")
			}
			if c.GetType() != tt.wantType {
				t.Errorf("type %v, want %v", c.GetType(), tt.wantType)
			}
			eds := c.GetEdsClusterConfig()
			if eds.GetServiceName() != tt.edsName {
				t.Errorf("EDS service_name %q, want %q", eds.GetServiceName(), tt.edsName)
			}
			if tt.edsName != "" && (eds.GetEdsConfig().GetAds() == nil || c.LoadAssignment != nil) {
				t.Errorf("EDS cluster without ADS, or with a load assignment: %v", c)
			}
			if tt.edsName == "" && len(c.GetLoadAssignment().GetEndpoints()) != 1 {
				t.Errorf("STRICT_DNS cluster without its one endpoint: %v", c)
			}
			noted := slices.ContainsFunc(res.Notes, func(n string) bool { return strings.Contains(n, "the cluster is STRICT_DNS on") })
			if noted != tt.strictNote {
				t.Errorf("STRICT_DNS note %v, want %v: %q", noted, tt.strictNote, res.Notes)
			}
		})
	}
	// The control plane's clusters stay as they were.
	res, err := TranslateFor(decodeYAML(t, "{service: geo}"), "shop")
	if err != nil {
		t.Fatal(err)
	}
	if c := res.Clusters[0]; c.GetType() != clusterv3.Cluster_STRICT_DNS || c.EdsClusterConfig != nil {
		t.Errorf("TranslateFor: %v", c)
	}
}

// TestEjectionCountPace: Envoy lowers a host's ejection count at each
// interval sweep that finds it back, minimesh once per baseEjectionTime
// (proxy/balancer): with the 1s sweep, Envoy's count falls base/1s times
// faster, which the export says rather than claiming to be exact.
func TestEjectionCountPace(t *testing.T) {
	for _, tt := range []struct {
		od   string
		note bool
	}{
		{"{consecutiveFailures: 3}", true}, // 30s
		{"{consecutiveFailures: 3, baseEjectionTime: 1s, maxEjectionTime: 10s}", false},
		{"{consecutiveFailures: 3, baseEjectionTime: 500ms, maxEjectionTime: 2s}", false},
	} {
		pols := decodeYAML(t, "{service: geo, outlierDetection: "+tt.od+"}")
		res, err := TranslateFor(pols, "shop")
		if err != nil {
			t.Fatal(err)
		}
		if d := res.Clusters[0].OutlierDetection.Interval.AsDuration(); d != sweep {
			t.Errorf("%s: interval %s", tt.od, d)
		}
		noted := slices.ContainsFunc(res.Notes, func(n string) bool {
			return strings.Contains(n, "lowers a host's ejection count by one at each 1s sweep")
		})
		if noted != tt.note {
			t.Errorf("%s: note on the ejection count %v, want %v: %q", tt.od, noted, tt.note, res.Notes)
		}
	}
}

// TestRetriesAvoidTriedHosts: a minimesh retry goes to another endpoint
// than the last try's (proxy/balancer); Envoy's may pick the failed host
// again unless the previous_hosts predicate rejects it. Every route
// that retries has it; a retry policy that only limits the one try
// (perTryOnly) retries nothing and has none.
func TestRetriesAvoidTriedHosts(t *testing.T) {
	pols := decodeYAML(t,
		"{service: a, retries: {attempts: 2, retryOn: [5xx, connect-failure, grpc-unavailable]}}",
		"{service: b, retries: {attempts: 2, retryOn: [connect-failure]}}",
		"{service: c, timeout: 2s, retries: {attempts: 0, perTryTimeout: 1s}}")
	out, err := Export(pols, "shop", Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, routes := readBack(t, out)
	var retrying int
	for _, vh := range routes[0].VirtualHosts {
		for _, r := range vh.Routes {
			rp := r.GetRoute().GetRetryPolicy()
			if rp == nil {
				continue
			}
			preds := rp.GetRetryHostPredicate()
			if rp.RetryOn == "" {
				if len(preds) != 0 {
					t.Errorf("%s/%s retries nothing, yet has %v", vh.Name, r.Name, preds)
				}
				continue
			}
			retrying++
			if len(preds) != 1 || preds[0].Name != "envoy.retry_host_predicates.previous_hosts" ||
				!strings.HasSuffix(preds[0].GetTypedConfig().GetTypeUrl(), "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate") ||
				rp.HostSelectionRetryMaxAttempts != hostSelectionAttempts {
				t.Errorf("%s/%s: retry_host_predicate %v, host_selection_retry_max_attempts %d", vh.Name, r.Name, preds, rp.HostSelectionRetryMaxAttempts)
			}
		}
	}
	if retrying < 4 {
		t.Errorf("%d routes retry, want a's three and b's one", retrying)
	}
}

// TestExportReadsAsTheControlPlane: Export gives the proxies of ns what
// the control plane serves them (TranslateFor), whatever namespace a
// policy was written in: a Service of another namespace is never claimed
// by its bare name. Translate, which the export used, resolved each
// policy in its own namespace, so web's `reviews.web` claimed `reviews`
// for shop's proxies.
func TestExportReadsAsTheControlPlane(t *testing.T) {
	pols, err := policy.Decode("web.yaml", []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: reviews, namespace: web}\nspec: {service: reviews.web, timeout: 1s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := Export(pols, "shop", Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, routes := readBack(t, out)
	want, err := TranslateFor(pols, "shop")
	if err != nil {
		t.Fatal(err)
	}
	domains := func(vhs []*routev3.VirtualHost) (d []string) {
		for _, vh := range vhs {
			d = append(d, vh.Domains...)
		}
		return d
	}
	got := domains(routes[0].VirtualHosts)
	if !slices.Equal(got, domains(want.Routes.VirtualHosts)) {
		t.Errorf("domains %q, the control plane serves shop %q", got, domains(want.Routes.VirtualHosts))
	}
	if slices.Contains(got, "reviews") || slices.Contains(got, "reviews:80") {
		t.Errorf("shop's proxies route their bare `reviews` to reviews.web: %q", got)
	}
}

package envoy

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// decodeFile reads testdata policies as policy.Load would.
func decodeFile(t *testing.T, name string) []*policy.ResiliencePolicy {
	t.Helper()
	pols, err := policy.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	return pols
}

// decodeYAML reads policies from a string, for the table tests.
func decodeYAML(t *testing.T, docs ...string) []*policy.ResiliencePolicy {
	t.Helper()
	var all []string
	for i, d := range docs {
		all = append(all, fmt.Sprintf("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: p%d}\nspec: %s\n", i, d))
	}
	pols, err := policy.Decode("test.yaml", []byte(strings.Join(all, "---\n")))
	if err != nil {
		t.Fatal(err)
	}
	return pols
}

// readBack parses Export's YAML into Envoy's types, strictly, and
// validates each, as Envoy would load them; it also holds what Envoy
// checks across resources: unique cluster names, unique virtual host
// names, and a domain in at most one virtual host.
func readBack(t *testing.T, out []byte) (clusters []*clusterv3.Cluster, routes []*routev3.RouteConfiguration) {
	t.Helper()
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
			clusters = append(clusters, &c)
		case strings.Contains(doc, "# envoy.config.route.v3.RouteConfiguration"):
			var r routev3.RouteConfiguration
			if err := protojson.Unmarshal(js, &r); err != nil {
				t.Fatalf("routes: %v\n%s", err, doc)
			}
			if err := r.Validate(); err != nil {
				t.Fatal(err)
			}
			routes = append(routes, &r)
		}
	}
	names := map[string]bool{}
	for _, c := range clusters {
		if names[c.Name] {
			t.Errorf("cluster %s twice", c.Name)
		}
		names[c.Name] = true
	}
	for _, r := range routes {
		vhosts, domains := map[string]bool{}, map[string]string{}
		for _, vh := range r.VirtualHosts {
			if vhosts[vh.Name] {
				t.Errorf("virtual host %s twice", vh.Name)
			}
			vhosts[vh.Name] = true
			if !names[vh.Routes[0].GetRoute().GetCluster()] {
				t.Errorf("virtual host %s routes to no cluster of the export", vh.Name)
			}
			for _, d := range vh.Domains {
				if prev, dup := domains[d]; dup {
					t.Errorf("domain %s in virtual hosts %s and %s: Envoy refuses the configuration", d, prev, vh.Name)
				}
				domains[d] = vh.Name
			}
		}
	}
	return clusters, routes
}

// TestCollisionsGolden: the export of policies that used to share names
// (geo, geo:80, geo.shop.svc.cluster.local, ...) is one valid Envoy
// configuration with a cluster per policy.
func TestCollisionsGolden(t *testing.T) {
	pols := decodeFile(t, "testdata/collisions.yaml")
	got, err := Export(pols, "shop", Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "testdata/collisions.golden.yaml", got)
	clusters, routes := readBack(t, got)
	if len(clusters) != len(pols) || len(routes) != 1 {
		t.Fatalf("%d clusters and %d route configurations for %d policies", len(clusters), len(routes), len(pols))
	}
	// geo and geo.shop.svc.cluster.local dial port 80, whose Hosts go to
	// geo:80 and geo.shop:80 (TestDomainsFollowTheMatcher): no virtual
	// host of their own.
	if n := len(routes[0].VirtualHosts); n != len(pols)-2 {
		t.Fatalf("%d virtual hosts for %d policies, two of which no Host reaches", n, len(pols))
	}
}

// TestXDSRoundTrip is what a sidecar gets over xDS: every policy that
// policy.Load keeps comes back from its cluster as it went in, "geo" (any
// port) included next to "geo:80", and its cluster's name reads back as
// its service.
func TestXDSRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name string
		pols []*policy.ResiliencePolicy
	}{
		{"geo, geo:80, geo:8080", decodeYAML(t, "{service: geo, timeout: 7s}", "{service: \"geo:80\", timeout: 3s}", "{service: \"geo:8080\", timeout: 8s}")},
		{"collisions.yaml", decodeFile(t, "testdata/collisions.yaml")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Translate(tt.pols, "shop")
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Clusters) != len(tt.pols) {
				t.Fatalf("%d clusters for %d policies", len(res.Clusters), len(tt.pols))
			}
			got := map[string]*policy.ResiliencePolicy{}
			for _, c := range res.Clusters {
				b, err := proto.Marshal(c)
				if err != nil {
					t.Fatal(err)
				}
				p, err := xdsclient.FromCluster(b)
				if err != nil {
					t.Fatal(err)
				}
				if _, dup := got[c.Name]; dup {
					t.Fatalf("cluster name %s twice", c.Name)
				}
				got[c.Name] = p
				if svc, ok := ParseClusterName(c.Name); !ok || svc != p.Spec.Service {
					t.Errorf("ParseClusterName(%s) = %q, %v; want %q", c.Name, svc, ok, p.Spec.Service)
				}
			}
			for _, want := range tt.pols {
				var found bool
				for _, p := range got {
					if p.Metadata == want.Metadata && reflect.DeepEqual(p.Spec, want.Spec) {
						found = true
					}
				}
				if !found {
					t.Errorf("policy %s (%s) lost in the round trip", want.Metadata.Name, want.Spec.Service)
				}
			}
		})
	}
}

// TestDomainsFollowTheMatcher: each Host goes to the virtual host of the
// policy the sidecar's matcher applies to it, so a port's policy wins
// over an any-port one and a spelling's own policy over another
// spelling's, and no Host is listed twice. The sidecar looks a Host
// without a port up as host:80 (sidecarAuthority), so a port-80 policy
// takes the bare spellings too.
func TestDomainsFollowTheMatcher(t *testing.T) {
	pols := decodeFile(t, "testdata/collisions.yaml")
	res, err := Translate(pols, "shop")
	if err != nil {
		t.Fatal(err)
	}
	table := policy.NewTable(pols, "shop")
	byCluster := map[string]*policy.ResiliencePolicy{}
	for _, c := range res.Clusters {
		md := c.Metadata.FilterMetadata[MetadataKey].AsMap()
		for _, p := range pols {
			if p.Metadata.Name == md["policy"] {
				byCluster[c.Name] = p
			}
		}
	}
	owner := map[string]string{}
	for _, vh := range res.Routes.VirtualHosts {
		p := byCluster[vh.Routes[0].GetRoute().GetCluster()]
		for _, d := range vh.Domains {
			if prev, dup := owner[d]; dup {
				t.Errorf("domain %s in %s and %s", d, prev, vh.Name)
			}
			owner[d] = p.Metadata.Name
			if got := table.Lookup(sidecarAuthority(d)); got != p {
				t.Errorf("domain %s routes to policy %s, the sidecar applies %s", d, p.Metadata.Name, got.Metadata.Name)
			}
		}
	}
	for _, tt := range []struct{ authority, policy string }{
		{"geo", "geo-80"},
		{"geo:80", "geo-80"},
		{"geo:8080", "geo-8080"},
		{"geo.shop", "geo-ns-80"},
		{"geo.shop:80", "geo-ns-80"},
		{"geo.shop.svc.cluster.local", "geo-ns-80"},
		{"geo.shop.svc.cluster.local:80", "geo-ns-80"},
		{"geo.shop.svc:8080", "geo-8080"},
		{"a.b.cluster.local", "external"},
		{"a.b.cluster.local:80", "external"},
		{"slow:9000", "slow"},
	} {
		if owner[tt.authority] != tt.policy {
			t.Errorf("Host %s: virtual host of %q, want %q", tt.authority, owner[tt.authority], tt.policy)
		}
	}
	for _, d := range []string{"a.b.svc.cluster.local", "a.b.svc.cluster.local:80", "a.b", "slow", "slow:80"} {
		if _, ok := owner[d]; ok {
			t.Errorf("domain %s is routed; the sidecar matches no policy of the set to it", d)
		}
	}
	// geo and geo.shop.svc.cluster.local apply on any port, but their
	// clusters dial port 80, which the port-80 policies take: no Host
	// reaches them, and their clusters stay, for the metadata.
	for _, name := range []string{"geo-any", "geo-fqdn"} {
		for d, p := range owner {
			if p == name {
				t.Errorf("domain %s routes to %s, which the sidecar applies to no Host on port 80", d, name)
			}
		}
		if !slices.ContainsFunc(res.Clusters, func(c *clusterv3.Cluster) bool { return byCluster[c.Name].Metadata.Name == name }) {
			t.Errorf("no cluster for %s", name)
		}
	}
}

// sidecarAuthority is the authority the sidecar looks a Host up by: with
// the default port when it has none (proxy/outbound, onDefaultPort).
func sidecarAuthority(host string) string {
	if strings.Contains(host, ":") {
		return host
	}
	return host + ":80"
}

// TestClusterNames: distinct services give distinct names, the external
// host keeps its own name, and every name reads back as its service.
func TestClusterNames(t *testing.T) {
	for _, tt := range []struct{ service, name string }{
		{"geo", "outbound|0||geo.shop.svc.cluster.local"},
		{"geo:80", "outbound|80||geo.shop.svc.cluster.local"},
		{"geo:8080", "outbound|8080||geo.shop.svc.cluster.local"},
		{"geo.shop", "outbound|0|geo.shop|geo.shop.svc.cluster.local"},
		{"geo.shop.svc", "outbound|0|geo.shop.svc|geo.shop.svc.cluster.local"},
		{"geo.shop.svc.cluster.local:80", "outbound|80|geo.shop.svc.cluster.local|geo.shop.svc.cluster.local"},
		{"geo.other", "outbound|0|geo.other|geo.other.svc.cluster.local"},
		{"a.b.cluster.local", "outbound|0||a.b.cluster.local"},
		{"x.svc.cluster.local", "outbound|0||x.svc.cluster.local"},
		{"api.maps.example.com:443", "outbound|443||api.maps.example.com"},
		{"10.0.0.1:8080", "outbound|8080||10.0.0.1"},
	} {
		p := decodeYAML(t, fmt.Sprintf("{service: %q}", tt.service))[0]
		d := newDestination(p, "shop")
		if d.name != tt.name {
			t.Errorf("%s: cluster %s, want %s", tt.service, d.name, tt.name)
		}
		if svc, ok := ParseClusterName(d.name); !ok || svc != tt.service {
			t.Errorf("ParseClusterName(%s) = %q, %v; want %q", d.name, svc, ok, tt.service)
		}
	}
	for _, name := range []string{"minimesh|defaults", "outbound|x||geo", "inbound|80||geo", "outbound|80||", "outbound|80|geo"} {
		if svc, ok := ParseClusterName(name); ok {
			t.Errorf("ParseClusterName(%s) = %q, want not ok", name, svc)
		}
	}
}

// TestExternalHost: a host that only ends like a cluster name is not a
// Service (policy.ServiceFQDN): its cluster dials it as written and its
// only domains are its own.
func TestExternalHost(t *testing.T) {
	res, err := Translate(decodeYAML(t, "{service: a.b.cluster.local}"), "shop")
	if err != nil {
		t.Fatal(err)
	}
	c, vh := res.Clusters[0], res.Routes.VirtualHosts[0]
	addr := c.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().Address.GetSocketAddress().Address
	if c.Name != "outbound|0||a.b.cluster.local" || addr != "a.b.cluster.local" ||
		!slices.Equal(vh.Domains, []string{"a.b.cluster.local", "a.b.cluster.local:80"}) {
		t.Fatalf("cluster %s dialling %s, domains %v", c.Name, addr, vh.Domains)
	}
}

// TestSameServiceTwice: two policies that would share a cluster (which
// policy.Load refuses in files, but a control plane may be handed) are an
// error naming both, never one of them dropped.
func TestSameServiceTwice(t *testing.T) {
	// One decode each: Decode, like Load, refuses the pair in one file.
	pols := append(decodeYAML(t, "{service: geo, timeout: 1s}", "{service: \"geo:80\"}"), decodeYAML(t, "{service: geo, timeout: 2s}")...)
	pols[2].Metadata.Name = "p2"
	_, err := Translate(pols, "shop")
	if err == nil || !strings.Contains(err.Error(), `"p0"`) || !strings.Contains(err.Error(), `"p2"`) || !strings.Contains(err.Error(), "outbound|0||geo.shop.svc.cluster.local") {
		t.Fatalf("got %v, want an error naming p0, p2 and their cluster", err)
	}
}

// TestRetryOn: Envoy has no condition for a try that ran out of time; a
// per-try timeout is retried under reset (or 5xx, gateway-error), never
// by adding gateway-error's 502-504 responses; a note names what Envoy
// retries that retryOn does not.
func TestRetryOn(t *testing.T) {
	for _, tt := range []struct {
		retryOn []string
		want    string
		noted   []string // what the note must name; nil: no note
	}{
		{[]string{"timeout"}, "reset", []string{"connect-failure", "reset ("}},
		{[]string{"connect-failure", "reset", "timeout"}, "connect-failure,refused-stream,reset", nil},
		{[]string{"reset", "timeout"}, "reset", []string{"connect-failure"}},
		{[]string{"connect-failure", "timeout", "503"}, "connect-failure,refused-stream,reset,retriable-status-codes", []string{"reset ("}},
		{[]string{"5xx", "timeout"}, "5xx", []string{"connect-failure", "reset ("}},
		{[]string{"gateway-error", "connect-failure", "reset", "timeout"}, "gateway-error,connect-failure,refused-stream,reset", nil},
		{[]string{"connect-failure", "503"}, "connect-failure,refused-stream,retriable-status-codes", nil},
		{[]string{"5xx"}, "5xx", []string{"connect-failure", "reset (", "timeout"}},
	} {
		var c policy.Conditions
		for _, item := range tt.retryOn {
			class, code, err := policy.ParseCondition(item)
			if err != nil {
				t.Fatal(err)
			}
			c.Add(class, code)
		}
		got, notes := retryOn("p", c)
		if got != tt.want {
			t.Errorf("%v: retry_on %q, want %q", tt.retryOn, got, tt.want)
		}
		if strings.Contains(got, "gateway-error") && !c.Has(policy.ClassGatewayError) {
			t.Errorf("%v: gateway-error retries 502-504 responses that retryOn does not name", tt.retryOn)
		}
		if tt.noted == nil {
			if len(notes) != 0 {
				t.Errorf("%v: notes %q, want none", tt.retryOn, notes)
			}
			continue
		}
		if len(notes) != 1 {
			t.Fatalf("%v: notes %q, want one", tt.retryOn, notes)
		}
		for _, n := range tt.noted {
			if !strings.Contains(notes[0], n) {
				t.Errorf("%v: note %q does not name %s", tt.retryOn, notes[0], n)
			}
		}
	}
}

// TestPerTryTimeoutWithoutRetries: attempts 0 still limits the one try
// (docs/policy.md), so the route keeps per_try_timeout with num_retries 0
// and no retry_on.
func TestPerTryTimeoutWithoutRetries(t *testing.T) {
	for _, tt := range []struct {
		spec      string
		perTry    time.Duration // 0: no retry policy at all
		numRetrie uint32
	}{
		{"{service: geo, timeout: 2s, retries: {attempts: 0, perTryTimeout: 300ms}}", 300 * time.Millisecond, 0},
		{"{service: geo, timeout: 2s, retries: {attempts: 0}}", 0, 0},
		{"{service: geo, timeout: 2s}", 0, 0},
		{"{service: geo, timeout: 2s, retries: {attempts: 1, perTryTimeout: 1s}}", time.Second, 1},
	} {
		res, err := Translate(decodeYAML(t, tt.spec), "shop")
		if err != nil {
			t.Fatal(err)
		}
		rp := res.Routes.VirtualHosts[0].Routes[0].GetRoute().RetryPolicy
		if tt.perTry == 0 {
			if rp != nil {
				t.Errorf("%s: retry policy %v, want none", tt.spec, rp)
			}
			continue
		}
		if rp == nil || rp.PerTryTimeout.AsDuration() != tt.perTry || rp.NumRetries.GetValue() != tt.numRetrie {
			t.Errorf("%s: retry policy %v, want per_try_timeout %v and num_retries %d", tt.spec, rp, tt.perTry, tt.numRetrie)
		}
		if tt.numRetrie == 0 && rp.RetryOn != "" {
			t.Errorf("%s: retry_on %q with no retries", tt.spec, rp.RetryOn)
		}
	}
}

// TestSubMillisecond: Envoy reads route timeouts in whole milliseconds and
// takes 0 for none, so a timeout under 1ms is rounded up, with a note,
// never exported as one Envoy would read as no timeout.
func TestSubMillisecond(t *testing.T) {
	for _, tt := range []struct {
		in, want time.Duration
	}{
		{0, 0},
		{time.Nanosecond, time.Millisecond},
		{500 * time.Microsecond, time.Millisecond},
		{time.Millisecond, time.Millisecond},
		{1500 * time.Microsecond, 2 * time.Millisecond},
		{2 * time.Second, 2 * time.Second},
		// No next millisecond: the last whole one, never a wrap.
		{math.MaxInt64, 9223372036854 * time.Millisecond},
		{9223372036854 * time.Millisecond, 9223372036854 * time.Millisecond},
	} {
		if got := envoyDuration(tt.in); got != tt.want {
			t.Errorf("envoyDuration(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
	res, err := Translate(decodeYAML(t, "{service: geo, timeout: 500us, retries: {attempts: 1, perTryTimeout: 300us, backoff: {base: 100us, max: 200us}}}"), "shop")
	if err != nil {
		t.Fatal(err)
	}
	route := res.Routes.VirtualHosts[0].Routes[0].GetRoute()
	if route.Timeout.AsDuration() != time.Millisecond || route.RetryPolicy.PerTryTimeout.AsDuration() != time.Millisecond ||
		route.RetryPolicy.RetryBackOff.BaseInterval.AsDuration() != time.Millisecond || route.RetryPolicy.RetryBackOff.MaxInterval.AsDuration() != time.Millisecond {
		t.Fatalf("route %v", route)
	}
	var noted bool
	for _, n := range res.Notes {
		noted = noted || strings.Contains(n, "timeout 500µs") && strings.Contains(n, "perTryTimeout 300µs") && strings.Contains(n, "rounded up")
	}
	if !noted {
		t.Fatalf("no note on the rounding: %q", res.Notes)
	}
}

// TestTranslateFor: the resources a proxy of a namespace is served read
// every short name in that namespace, whichever namespace the policy was
// written in (a cluster-wide one, in the controller's), as the sidecar's
// matcher does (docs/policy.md, "Matching"); Translate, for export,
// keeps a policy's own namespace. Both carry metadata.namespace as
// written.
func TestTranslateFor(t *testing.T) {
	pols, err := policy.Decode("mesh.yaml", []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: reviews, namespace: mesh}\nspec: {service: reviews, timeout: 2s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		translate func([]*policy.ResiliencePolicy, string) (*Resources, error)
		cluster   string
	}{
		{"TranslateFor (served)", TranslateFor, "outbound|0||reviews.shop.svc.cluster.local"},
		{"Translate (export)", Translate, "outbound|0||reviews.mesh.svc.cluster.local"},
	} {
		res, err := tc.translate(pols, "shop")
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Clusters) != 1 || res.Clusters[0].GetName() != tc.cluster {
			t.Fatalf("%s: clusters %v, want %s", tc.name, res.Clusters, tc.cluster)
		}
		md := res.Clusters[0].GetMetadata().GetFilterMetadata()[MetadataKey].GetFields()
		if md["namespace"].GetStringValue() != "mesh" {
			t.Errorf("%s: metadata namespace %q, want mesh as written", tc.name, md["namespace"].GetStringValue())
		}
	}
	if err := CheckNamesFor(pols, "shop"); err != nil {
		t.Fatal(err)
	}
}

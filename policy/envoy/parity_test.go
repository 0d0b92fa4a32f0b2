package envoy

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/minimesh/minimesh/policy"
)

// These tests hold the export to what the sidecar does at runtime, where
// the two used to differ.

// ownerOf is the virtual host (by its cluster's policy service) that
// routes domain, "" when none does.
func ownerOf(res *Resources, domain string) string {
	for _, vh := range res.Routes.VirtualHosts {
		if !slices.Contains(vh.Domains, domain) {
			continue
		}
		for _, c := range res.Clusters {
			if c.Name == vh.Routes[0].GetRoute().GetCluster() {
				return c.Metadata.FilterMetadata[MetadataKey].AsMap()["service"].(string)
			}
		}
	}
	return ""
}

// TestBareHostTakesPort80Policy: the sidecar reads a Host without a port
// as port 80 (curl, Go and browsers leave :80 out), so a port-80 policy
// serves it, ahead of a policy without a port; Envoy must route it alike.
func TestBareHostTakesPort80Policy(t *testing.T) {
	for _, tt := range []struct {
		name     string
		services []string
		want     map[string]string // domain: the policy's service, "" none
	}{
		{"port 80 alone", []string{"geo:80"}, map[string]string{
			"geo": "geo:80", "geo:80": "geo:80", "geo.shop": "geo:80", "geo.shop.svc.cluster.local": "geo:80",
		}},
		{"port 80 beside any port", []string{"geo", "geo:80"}, map[string]string{
			"geo": "geo:80", "geo:80": "geo:80", "geo.shop.svc": "geo:80",
		}},
		{"any port beside port 8080", []string{"geo", "geo:8080"}, map[string]string{
			"geo": "geo", "geo:80": "geo", "geo:8080": "geo:8080",
		}},
		{"port 8080 alone", []string{"geo:8080"}, map[string]string{"geo": "", "geo:80": ""}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var docs []string
			for _, s := range tt.services {
				docs = append(docs, "{service: "+s+"}")
			}
			pols := decodeYAML(t, docs...)
			res, err := TranslateFor(pols, "shop")
			if err != nil {
				t.Fatal(err)
			}
			table := policy.NewTable(pols, "shop")
			for domain, want := range tt.want {
				got := ownerOf(res, domain)
				if got != want {
					t.Errorf("Host %s: routed to %q, want %q", domain, got, want)
				}
				sidecar := table.Lookup(sidecarAuthority(domain)).Spec.Service
				if sidecar == policy.BuiltinDefault().Spec.Service {
					sidecar = ""
				}
				if got != sidecar {
					t.Errorf("Host %s: routed to %q, the sidecar applies %q", domain, got, sidecar)
				}
			}
		})
	}
}

// TestRetryBodyLimit: the sidecar retries a request body of at most
// 64 KiB; a retrying route bounds Envoy's retry buffer alike, and a
// route that retries nothing sets no limit.
func TestRetryBodyLimit(t *testing.T) {
	for _, tt := range []struct {
		spec  string
		limit map[string]uint64 // route name ("" for the one route): limit, 0 none
	}{
		{"{service: a, retries: {attempts: 2, retryOn: [connect-failure]}}", map[string]uint64{"": 65536}},
		{"{service: a, retries: {attempts: 2, retryOn: [5xx]}}", map[string]uint64{routeIdempotent: 65536, routeIdempotencyKey: 65536, routeOther: 0}},
		{"{service: a, retries: {attempts: 2, retryOn: [5xx, connect-failure]}}", map[string]uint64{routeIdempotent: 65536, routeIdempotencyKey: 65536, routeOther: 65536}},
		{"{service: a, retries: {attempts: 0, perTryTimeout: 1s}}", map[string]uint64{"": 0}},
		{"{service: a}", map[string]uint64{"": 0}},
	} {
		res, err := TranslateFor(decodeYAML(t, tt.spec), "shop")
		if err != nil {
			t.Fatal(err)
		}
		routes := res.Routes.VirtualHosts[0].Routes
		if len(routes) != len(tt.limit) {
			t.Fatalf("%s: %d routes, want %d", tt.spec, len(routes), len(tt.limit))
		}
		for _, rt := range routes {
			want, ok := tt.limit[rt.Name]
			if !ok {
				t.Fatalf("%s: unexpected route %q", tt.spec, rt.Name)
			}
			if got := rt.GetRequestBodyBufferLimit().GetValue(); got != want {
				t.Errorf("%s: route %q: request_body_buffer_limit %d, want %d", tt.spec, rt.Name, got, want)
			}
			//lint:ignore SA1019 the test checks that the deprecated field stays unset
			if rt.PerRequestBufferLimitBytes != nil {
				t.Errorf("%s: route %q sets the deprecated per_request_buffer_limit_bytes too", tt.spec, rt.Name)
			}
		}
	}
}

// TestTwoLabelServiceDialsAsWritten: the sidecar dials name.ns as the app
// wrote it, where policy.ServiceFQDN reads it as a Service: httpbin.org
// must not resolve httpbin.org.svc.cluster.local only.
func TestTwoLabelServiceDialsAsWritten(t *testing.T) {
	for _, tt := range []struct {
		service, addr string
		note          bool
	}{
		{"httpbin.org", "httpbin.org", true},
		{"reviews.web:9080", "reviews.web", true},
		{"reviews.web.svc:9080", "reviews.web.svc.cluster.local", false},
		{"reviews", "reviews.shop.svc.cluster.local", false},
		{"api.example.com:443", "api.example.com", false},
	} {
		res, err := TranslateFor(decodeYAML(t, "{service: "+tt.service+"}"), "shop")
		if err != nil {
			t.Fatal(err)
		}
		sa := res.Clusters[0].LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().Address.GetSocketAddress()
		if sa.Address != tt.addr {
			t.Errorf("%s: cluster resolves %s, want %s", tt.service, sa.Address, tt.addr)
		}
		noted := slices.ContainsFunc(res.Notes, func(n string) bool { return strings.Contains(n, "two-label name") })
		if noted != tt.note {
			t.Errorf("%s: two-label note %v, want %v: %q", tt.service, noted, tt.note, res.Notes)
		}
	}
}

// TestSpellingsShareEjection: the spellings of one Service port share one
// ejection state in the sidecar, configured from the short name's policy;
// every spelling's cluster gets that policy's settings, and a note says
// Envoy ejects per cluster.
func TestSpellingsShareEjection(t *testing.T) {
	short := "{service: 'geo:8000', outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 10s}}"
	long := "{service: 'geo.shop.svc.cluster.local:8000', outlierDetection: {consecutiveFailures: 9, baseEjectionTime: 40s}}"
	other := "{service: 'geo:9000', outlierDetection: {consecutiveFailures: 7}}"
	for _, tt := range []struct {
		name string
		docs []string
	}{
		{"short first", []string{short, long, other}},
		{"long first", []string{long, other, short}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, eds := range []bool{false, true} {
				res, err := TranslateForWith(decodeYAML(t, tt.docs...), "shop", Options{EDS: eds})
				if err != nil {
					t.Fatal(err)
				}
				want := map[string]uint32{
					"outbound|8000||geo.shop.svc.cluster.local":                           3,
					"outbound|8000|geo.shop.svc.cluster.local|geo.shop.svc.cluster.local": 3,
					"outbound|9000||geo.shop.svc.cluster.local":                           7,
				}
				for _, c := range res.Clusters {
					if got := c.OutlierDetection.GetConsecutive_5Xx().GetValue(); got != want[c.Name] {
						t.Errorf("eds %v: %s: consecutive_5xx %d, want %d", eds, c.Name, got, want[c.Name])
					}
				}
				var shared int
				for _, n := range res.Notes {
					if strings.Contains(n, "Envoy keeps ejections per cluster") {
						shared++
					}
				}
				if shared != 2 {
					t.Errorf("eds %v: %d notes on per-cluster ejection, want 2 (one per spelling of port 8000): %q", eds, shared, res.Notes)
				}
			}
		})
	}
}

// TestSafeRouteMatches: the idempotency-key route takes a request whose
// key has a value (the sidecar ignores an empty one), and the grpc route
// what the sidecar takes for gRPC (not grpc-web).
func TestSafeRouteMatches(t *testing.T) {
	res, err := TranslateFor(decodeYAML(t, "{service: a, retries: {attempts: 2, retryOn: [5xx, grpc-unavailable]}}"), "shop")
	if err != nil {
		t.Fatal(err)
	}
	routes := res.Routes.VirtualHosts[0].Routes
	first := func(headers map[string]string) string {
		for _, rt := range routes {
			all := true
			for _, m := range rt.Match.Headers {
				all = all && envoyHeaderMatch(t, m, headers)
			}
			if all {
				return rt.Name
			}
		}
		return ""
	}
	for _, tt := range []struct {
		headers map[string]string
		route   string
	}{
		{map[string]string{":method": "POST", "idempotency-key": "k-1"}, routeIdempotencyKey},
		{map[string]string{":method": "POST", "idempotency-key": ""}, routeOther},
		{map[string]string{":method": "POST", "content-type": "application/grpc"}, routeGRPC},
		{map[string]string{":method": "POST", "content-type": "application/grpc+proto"}, routeGRPC},
		{map[string]string{":method": "POST", "content-type": "application/grpc; charset=utf-8"}, routeGRPC},
		{map[string]string{":method": "POST", "content-type": "Application/GRPC"}, routeGRPC},
		{map[string]string{":method": "POST", "content-type": "application/grpc-web+proto"}, routeOther},
		{map[string]string{":method": "POST", "content-type": "application/grpc-web"}, routeOther},
		{map[string]string{":method": "POST", "content-type": "application/grpcx"}, routeOther},
		{map[string]string{":method": "GET"}, routeIdempotent},
	} {
		if got := first(tt.headers); got != tt.route {
			t.Errorf("%v: route %q, want %q", tt.headers, got, tt.route)
		}
	}
}

// envoyHeaderMatch models a HeaderMatcher on one header value as Envoy
// reads it: present_match on presence, a string match on the value, a
// safe_regex on the whole value (RE2 FullMatch).
func envoyHeaderMatch(t *testing.T, m *routev3.HeaderMatcher, headers map[string]string) bool {
	t.Helper()
	v, ok := headers[m.Name]
	if m.GetPresentMatch() {
		return ok
	}
	sm := m.GetStringMatch()
	if sm == nil || !ok {
		if sm == nil {
			t.Fatalf("header matcher %v is not modelled", m)
		}
		return false
	}
	switch {
	case sm.GetExact() != "":
		return v == sm.GetExact()
	case sm.GetPrefix() != "":
		return strings.HasPrefix(v, sm.GetPrefix())
	case sm.GetSafeRegex() != nil:
		return regexp.MustCompile("^(?:" + sm.GetSafeRegex().Regex + ")$").MatchString(v)
	}
	t.Fatalf("header matcher %v is not modelled", m)
	return false
}

// TestBackoffNote: Envoy's retry back-off is not the sidecar's; a note
// gives both formulas.
func TestBackoffNote(t *testing.T) {
	res, err := TranslateFor(decodeYAML(t, "{service: a, retries: {attempts: 2}}"), "shop")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(res.Notes, func(n string) bool {
		return strings.Contains(n, "[0, (2^n-1)·base)") && strings.Contains(n, "(0, min(max, base·2^(n-1))]")
	}) {
		t.Errorf("no back-off note: %q", res.Notes)
	}
}

package linkerd

import (
	"strings"
	"testing"
)

// These tests hold the export to what the sidecar does at runtime, where
// the two used to differ silently.

// TestTwoLabelServiceNote: policy.ServiceFQDN reads name.ns as a Service,
// the HTTPRoute's parent, where the sidecar dials the name as written
// (httpbin.org is the public host unless Service httpbin exists in a
// namespace org): the export says so.
func TestTwoLabelServiceNote(t *testing.T) {
	const note = "a two-label name is read as Service"
	for _, tt := range []struct {
		service string
		noted   bool
	}{
		{"httpbin.org", true},
		{"reviews.web:9080", true},
		{"reviews.web.svc:9080", false},
		{"reviews.web.svc.cluster.local", false},
		{"reviews", false},
	} {
		e := exportIn(t, pol("name: p, namespace: shop", "{service: '"+tt.service+"', timeout: 2s}"), "shop", "minimesh")
		if got := strings.Contains(e.comments, "# not carried over: service \""+tt.service+"\": "+note); got != tt.noted {
			t.Errorf("%s: note %v, want %v:\n%s", tt.service, got, tt.noted, e.comments)
		}
	}
}

// TestAccrualFollowsCanonicalSpelling: the sidecar ejects the endpoints
// of every spelling of a Service with the outlierDetection of the policy
// of its canonical name (its short name from a pod of its namespace,
// name.ns from another), whatever the input's order; Linkerd's one
// setting per Service must be that one.
func TestAccrualFollowsCanonicalSpelling(t *testing.T) {
	for _, tt := range []struct {
		name, ns, svcNS, svc string
		policies             []string // the canonical policy's has 3 failures
	}{
		{"short name with port, qualified first", "shop", "shop", "geo", []string{
			pol("name: long, namespace: shop", "{service: 'geo.shop.svc.cluster.local:8000', outlierDetection: {consecutiveFailures: 9}}"),
			pol("name: short, namespace: shop", "{service: 'geo:8000', outlierDetection: {consecutiveFailures: 3}}"),
		}},
		{"without ports, qualified first", "shop", "shop", "geo", []string{
			pol("name: long, namespace: shop", "{service: geo.shop, outlierDetection: {consecutiveFailures: 9}}"),
			pol("name: short, namespace: shop", "{service: geo, outlierDetection: {consecutiveFailures: 3}}"),
		}},
		{"another namespace's Service", "web", "shop", "reviews", []string{
			pol("name: long, namespace: web", "{service: 'reviews.shop.svc:9080', outlierDetection: {consecutiveFailures: 9}}"),
			pol("name: short, namespace: web", "{service: 'reviews.shop:9080', outlierDetection: {consecutiveFailures: 3}}"),
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, order := range [][]int{{0, 1}, {1, 0}} {
				e := exportIn(t, tt.policies[order[0]]+tt.policies[order[1]], tt.ns, "minimesh")
				got := annotationsOf(e.find("Service", tt.svcNS, tt.svc))[annMaxFailures]
				if got != "3" {
					t.Errorf("order %v: Service %s/%s keeps %v failures, want the canonical policy's 3:\n%s", order, tt.svcNS, tt.svc, got, e.comments)
				}
			}
		})
	}
}

// TestPortOverlapNote: a policy without a port and one for a port of the
// same Service both attach routes to that port, which Linkerd picks
// between by age where the sidecar always applies the port's policy:
// both are told, unless Linkerd never offers their routes together.
func TestPortOverlapNote(t *testing.T) {
	const note = "where the sidecar always applies the port's policy on port 8000"
	for _, tt := range []struct {
		name, src string
		notes     int
	}{
		{"same namespace", pol("name: orders, namespace: shop", "{service: orders, timeout: 1s}") +
			pol("name: orders-8000, namespace: shop", "{service: 'orders:8000', timeout: 2s}"), 2},
		{"same namespace, retrying port policy", pol("name: orders, namespace: shop", "{service: orders, timeout: 1s}") +
			pol("name: orders-8000, namespace: shop", "{service: 'orders:8000', retries: {attempts: 2}}"), 2},
		{"other ports only", pol("name: a, namespace: shop", "{service: 'orders:9000', timeout: 1s}") +
			pol("name: b, namespace: shop", "{service: 'orders:8000', timeout: 2s}"), 0},
		{"consumer routes of two namespaces", pol("name: a, namespace: web", "{service: orders.shop, timeout: 1s}") +
			pol("name: b, namespace: api", "{service: 'orders.shop:8000', timeout: 2s}"), 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := exportIn(t, tt.src, "shop", "minimesh")
			if got := strings.Count(e.comments, note); got != tt.notes {
				t.Errorf("%d notes, want %d:\n%s", got, tt.notes, e.comments)
			}
		})
	}
}

// TestAccrualCanonicalInThePolicysNamespace: a spelling is canonical as
// the sidecars the policy reaches read it: from the policy's own
// namespace (the short name for a Service there), and for a cluster-wide
// policy from the export's namespace, whose pods it is for. Judged from
// the export's namespace alone, geo.shop counted as canonical in an
// export for default, and a set over two namespaces was wrong for one of
// them whatever the namespace.
func TestAccrualCanonicalInThePolicysNamespace(t *testing.T) {
	twoNamespaces := pol("name: short, namespace: shop", "{service: geo, outlierDetection: {consecutiveFailures: 3}}") +
		pol("name: long, namespace: shop", "{service: geo.shop, outlierDetection: {consecutiveFailures: 9}}") +
		pol("name: r-short, namespace: web", "{service: reviews, outlierDetection: {consecutiveFailures: 3}}") +
		pol("name: r-long, namespace: web", "{service: reviews.web, outlierDetection: {consecutiveFailures: 9}}")
	// shop's sidecars eject geo's endpoints with shop's geo (3), every
	// other namespace's with the cluster-wide geo.shop (9).
	clusterWide := pol("name: short, namespace: shop", "{service: geo, outlierDetection: {consecutiveFailures: 3}}") +
		pol("name: all, namespace: minimesh", "{service: geo.shop, outlierDetection: {consecutiveFailures: 9}}")
	for _, tt := range []struct {
		src, ns, svcNS, svc, want string
	}{
		{twoNamespaces, "default", "shop", "geo", "3"},
		{twoNamespaces, "default", "web", "reviews", "3"},
		{twoNamespaces, "shop", "shop", "geo", "3"},
		{twoNamespaces, "shop", "web", "reviews", "3"},
		{twoNamespaces, "web", "shop", "geo", "3"},
		{twoNamespaces, "web", "web", "reviews", "3"},
		{clusterWide, "shop", "shop", "geo", "3"},
		{clusterWide, "default", "shop", "geo", "9"},
	} {
		e := exportIn(t, tt.src, tt.ns, "minimesh")
		if got := annotationsOf(e.find("Service", tt.svcNS, tt.svc))[annMaxFailures]; got != tt.want {
			t.Errorf("export for namespace %q: Service %s/%s keeps %v failures, want %s:\n%s", tt.ns, tt.svcNS, tt.svc, got, tt.want, e.comments)
		}
	}
}

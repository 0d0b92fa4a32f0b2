package linkerd

import (
	"strings"
	"testing"
)

// TestRouteScope: a minimesh policy of a namespace reaches that
// namespace's sidecars only, a cluster-wide one every namespace's
// (docs/controlplane.md). Linkerd applies an HTTPRoute in its parent
// Service's namespace (a producer route) to the clients of every
// namespace, and one in another namespace (a consumer route) to that
// namespace's clients only (GEP-1426; Linkerd's policy controller). The
// export put every route in the Service's namespace: web's policy for
// reviews.shop became a producer route that reached every namespace's
// callers, and a second namespace's policy of the same name replaced it
// on apply.
func TestRouteScope(t *testing.T) {
	for _, tt := range []struct {
		name, src string
		// routes are the HTTPRoutes wanted, as namespace/name; each
		// has a parentRef to the Service named by parent.
		routes []string
		parent string // namespace/name of the Service
		want   []string
		never  []string
	}{
		{
			name:   "consumer route",
			src:    pol("name: reviews, namespace: web", "{service: reviews.shop, timeout: 1s}"),
			routes: []string{"web/reviews"}, parent: "shop/reviews",
			want: []string{"# the HTTPRoutes in namespace web are consumer routes", "clients in namespace web only",
				"# not carried over: Linkerd gives the clients in namespace web the producer routes of Service shop/reviews"},
			never: []string{"are producer routes"},
		},
		{
			name: "two namespaces' policies for one Service",
			src: pol("name: reviews, namespace: web", "{service: reviews.shop, timeout: 1s}") +
				pol("name: reviews, namespace: books", "{service: reviews.shop.svc.cluster.local, timeout: 3s}"),
			routes: []string{"web/reviews", "books/reviews"}, parent: "shop/reviews",
			never: []string{"another policy's HTTPRoute"},
		},
		{
			name:   "a Service of the policy's own namespace",
			src:    pol("name: reviews, namespace: shop", "{service: reviews, timeout: 1s}"),
			routes: []string{"shop/reviews"}, parent: "shop/reviews",
			want: []string{"# not carried over: the HTTPRoutes in namespace shop are producer routes (Service shop/reviews is in the policy's own namespace), which Linkerd applies to the clients of every namespace; minimesh applies this policy to namespace shop's sidecars only"},
		},
		{
			name:   "cluster-wide, qualified",
			src:    pol("name: reviews, namespace: minimesh", "{service: reviews.shop, timeout: 1s}"),
			routes: []string{"shop/reviews"}, parent: "shop/reviews",
			want:  []string{"# not carried over: the policy applies cluster-wide, and the HTTPRoutes in namespace shop are producer routes"},
			never: []string{"namespace: minimesh"},
		},
		{
			name:   "cluster-wide, naming no namespace",
			src:    pol("name: reviews", "{service: reviews.shop:9080, timeout: 1s}"),
			routes: []string{"shop/reviews"}, parent: "shop/reviews",
			want: []string{"the policy applies cluster-wide"},
		},
		{
			// The Service's annotations are read for every namespace's
			// clients.
			name:   "failure accrual of a namespace's policy",
			src:    pol("name: reviews, namespace: web", "{service: reviews.shop, outlierDetection: {consecutiveFailures: 3}}"),
			parent: "shop/reviews",
			want:   []string{"# not carried over: outlierDetection (failure accrual): Linkerd reads it from Service shop/reviews's annotations, for the clients of every namespace; minimesh applies this policy to namespace web's sidecars only"},
		},
		{
			name:   "failure accrual of a cluster-wide policy",
			src:    pol("name: reviews, namespace: minimesh", "{service: reviews.shop, outlierDetection: {consecutiveFailures: 3}}"),
			parent: "shop/reviews",
			never:  []string{"Linkerd reads it from Service"},
		},
		{
			// A consumer route of web never meets books' clients, so
			// books' route is not padded for it; shop's producer route
			// meets web's clients, so it is.
			name: "padding where routes share clients",
			src: pol("name: r-web, namespace: web", "{service: reviews.shop, timeout: 1s, retries: {attempts: 2, retryOn: [5xx]}}") +
				pol("name: r-books, namespace: books", "{service: reviews.shop.svc, timeout: 2s}") +
				pol("name: r-shop, namespace: shop", "{service: reviews, timeout: 3s}"),
			routes: []string{"web/r-web", "web/r-web-no-retry", "books/r-books", "shop/r-shop"}, parent: "shop/reviews",
			want:  []string{"# HTTPRoute shop/r-shop also matches GET"},
			never: []string{"# HTTPRoute books/r-books also matches"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := exportIn(t, tt.src, "default", "minimesh")
			var got []string
			for _, d := range e.docs {
				if d["kind"] != "HTTPRoute" {
					continue
				}
				m := d["metadata"].(map[string]any)
				got = append(got, m["namespace"].(string)+"/"+m["name"].(string))
				ref := d["spec"].(map[string]any)["parentRefs"].([]any)[0].(map[string]any)
				parentNS, _ := ref["namespace"].(string)
				if parentNS == "" {
					parentNS = m["namespace"].(string) // the Gateway API's default
				}
				if p := parentNS + "/" + ref["name"].(string); p != tt.parent {
					t.Errorf("HTTPRoute %s: parentRef %s, want %s", got[len(got)-1], p, tt.parent)
				}
			}
			if strings.Join(got, " ") != strings.Join(tt.routes, " ") {
				t.Errorf("HTTPRoutes %q, want %q\n%s", got, tt.routes, e.comments)
			}
			if svc := e.find("Service", "shop", "reviews"); strings.Contains(tt.src, "outlierDetection") && svc == nil {
				t.Errorf("no Service document for shop/reviews")
			}
			for _, w := range tt.want {
				if !strings.Contains(e.comments, w) {
					t.Errorf("comments lack %q:\n%s", w, e.comments)
				}
			}
			for _, n := range tt.never {
				if strings.Contains(e.comments, n) {
					t.Errorf("comments have %q:\n%s", n, e.comments)
				}
			}
		})
	}
}

// TestServiceKeepsClusterWide: Linkerd reads failure accrual from the
// Service, for the clients of every namespace, which is where a
// cluster-wide policy applies; a policy of one namespace applies to that
// namespace's sidecars only. So the Service keeps the cluster-wide
// policy's annotations, even over one without a port (which used to win),
// and the other policy is told.
func TestServiceKeepsClusterWide(t *testing.T) {
	e := exportIn(t,
		pol("name: r-web, namespace: web", "{service: reviews.shop, outlierDetection: {consecutiveFailures: 7}}")+
			pol("name: r-all, namespace: minimesh", "{service: reviews.shop:9080, outlierDetection: {consecutiveFailures: 3}}"),
		"default", "minimesh")
	if n := e.count("Service"); n != 1 {
		t.Fatalf("%d Service documents, want 1:\n%s", n, e.comments)
	}
	got := annotationsOf(e.find("Service", "shop", "reviews"))[annMaxFailures]
	if got != "3" {
		t.Errorf("Service shop/reviews keeps %v failures, want the cluster-wide policy's 3:\n%s", got, e.comments)
	}
	want := "Service shop/reviews keeps that of ResiliencePolicy r-all (reviews.shop:9080, namespace minimesh)"
	if !strings.Contains(e.comments, want) {
		t.Errorf("comments lack %q:\n%s", want, e.comments)
	}
}

package linkerd

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/policy"
)

// request is what picks a route: the Service port it goes to, its
// method, and its headers (the name as the test writes it).
type request struct {
	port   int
	method string
	header map[string]string
}

func (r request) String() string {
	s := fmt.Sprintf("%s on port %d", r.method, r.port)
	for k, v := range r.header {
		s += fmt.Sprintf(" %s=%q", k, v)
	}
	return s
}

// matchRank is how well one of an HTTPRoute's matches fits a request;
// every match the export writes is PathPrefix /, so the path ranks
// alike and only the method and the number of header matches tell
// matches apart.
type matchRank struct {
	method  bool
	headers int
}

// gatewayLess ranks a method match above header matches (Gateway API,
// HTTPRouteRule.Matches); linkerdLess ranks header matches above the
// method, as Linkerd's proxy does (linkerd/http/route, http/match.rs).
// A route the export writes must be picked alike by both.
func gatewayLess(a, b matchRank) bool {
	if a.method != b.method {
		return !a.method
	}
	return a.headers < b.headers
}

func linkerdLess(a, b matchRank) bool {
	if a.headers != b.headers {
		return a.headers < b.headers
	}
	return !a.method && b.method
}

// rankRoute returns the best rank of the route's matches that fit the
// request, and false when none does. It fails the test on a match it
// does not model.
func rankRoute(t *testing.T, route map[string]any, r request, less func(a, b matchRank) bool) (matchRank, bool) {
	t.Helper()
	spec := route["spec"].(map[string]any)
	var best matchRank
	found := false
	for _, rule := range spec["rules"].([]any) {
		for _, m := range rule.(map[string]any)["matches"].([]any) {
			m := m.(map[string]any)
			for k := range m {
				if k != "path" && k != "method" && k != "headers" {
					t.Fatalf("match field %q is not modelled: %v", k, m)
				}
			}
			if p := m["path"].(map[string]any); p["type"] != "PathPrefix" || p["value"] != "/" {
				t.Fatalf("path match %v is not modelled", p)
			}
			var rank matchRank
			if method, ok := m["method"].(string); ok {
				if method != r.method {
					continue
				}
				rank.method = true
			}
			fits := true
			for _, h := range asList(m["headers"]) {
				h := h.(map[string]any)
				v, ok := headerValue(r.header, h["name"].(string))
				switch h["type"] {
				case "RegularExpression":
					// Linkerd wants the expression to cover the whole value.
					fits = fits && ok && regexp.MustCompile(`^(?:`+h["value"].(string)+`)$`).MatchString(v)
				case "Exact", nil:
					fits = fits && ok && v == h["value"]
				default:
					t.Fatalf("header match %v is not modelled", h)
				}
				rank.headers++
			}
			if !fits {
				continue
			}
			if !found || less(best, rank) {
				best, found = rank, true
			}
		}
	}
	return best, found
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

// headerValue looks a header up by name, in any case, as HTTP does.
func headerValue(h map[string]string, name string) (string, bool) {
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

// attached are the exported HTTPRoutes whose parent is the Service
// ns/name on that port: those with the port, and those without one.
func (e exported) attached(ns, name string, port int) []map[string]any {
	var routes []map[string]any
	for _, d := range e.docs {
		if d["kind"] != "HTTPRoute" || d["metadata"].(map[string]any)["namespace"] != ns {
			continue
		}
		for _, p := range d["spec"].(map[string]any)["parentRefs"].([]any) {
			p := p.(map[string]any)
			if p["name"] != name {
				continue
			}
			if pp, ok := p["port"].(float64); !ok || int(pp) == port {
				routes = append(routes, d)
			}
		}
	}
	return routes
}

// picked are the routes that Linkerd may send the request to: those
// whose best match ranks highest (several when they tie; Linkerd then
// takes the oldest). They must be the same under the Gateway API's
// ranking and Linkerd's proxy's.
func (e exported) picked(t *testing.T, ns, svc string, r request) []string {
	t.Helper()
	var byOrder [2][]string
	for i, less := range []func(a, b matchRank) bool{gatewayLess, linkerdLess} {
		var best matchRank
		var names []string
		for _, route := range e.attached(ns, svc, r.port) {
			rank, ok := rankRoute(t, route, r, less)
			if !ok {
				continue
			}
			name := route["metadata"].(map[string]any)["name"].(string)
			switch {
			case names == nil || less(best, rank):
				best, names = rank, []string{name}
			case !less(rank, best):
				names = append(names, name)
			}
		}
		byOrder[i] = names
	}
	if !slices.Equal(byOrder[0], byOrder[1]) {
		t.Fatalf("%s: the Gateway API's ranking picks %v, Linkerd's %v", r, byOrder[0], byOrder[1])
	}
	return byOrder[0]
}

var (
	safeMethods   = []string{"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}
	unsafeMethods = []string{"POST", "PATCH", "CONNECT", "PROPFIND"}
)

// TestOnlySafeRequestsRetried: minimesh retries only a request that is
// safe to send again (docs/policy.md, "Retries"): an idempotent method,
// or an Idempotency-Key header with a value. Linkerd retries any method
// a route with retry annotations takes, so the export must send every
// other request to a route without them, and still to one (Linkerd
// answers a request no HTTPRoute matches with 404) that has the
// policy's timeout.
func TestOnlySafeRequestsRetried(t *testing.T) {
	for _, tt := range []struct {
		name, spec string
		port       int    // the port the requests go to
		timeout    string // the timeout every request must have; "" none
		retries    bool   // whether safe requests are retried
		routes     int    // HTTPRoutes written
	}{
		{"status codes, a port, a timeout", "{service: geo:8000, timeout: 2s, retries: {attempts: 2, perTryTimeout: 500ms, retryOn: [connect-failure, '502', '503']}}", 8000, "2s", true, 2},
		{"5xx, every port, no timeout", "{service: geo, retries: {attempts: 3, retryOn: [5xx]}}", 80, "", true, 2},
		{"timeouts only", "{service: geo, timeout: 4s, retries: {attempts: 1, perTryTimeout: 1s, retryOn: [timeout]}}", 80, "4s", true, 2},
		{"gRPC codes and 5xx", "{service: geo, timeout: 3s, retries: {attempts: 2, retryOn: [5xx, grpc-unavailable]}}", 80, "3s", true, 2},
		{"attempts 0", "{service: geo, timeout: 2s, retries: {attempts: 0, perTryTimeout: 500ms}}", 80, "2s", false, 1},
		{"nothing Linkerd retries", "{service: geo, timeout: 2s, retries: {attempts: 2, retryOn: [connect-failure, reset]}}", 80, "2s", false, 1},
		{"no retries", "{service: geo, timeout: 2s}", 80, "2s", false, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := exportYAML(t, pol("name: geo, namespace: shop", tt.spec))
			if n := e.count("HTTPRoute"); n != tt.routes {
				t.Errorf("%d HTTPRoutes, want %d\n%s", n, tt.routes, e.comments)
			}
			var requests []request
			for _, m := range append(slices.Clone(safeMethods), unsafeMethods...) {
				requests = append(requests,
					request{port: tt.port, method: m},
					request{port: tt.port, method: m, header: map[string]string{"Idempotency-Key": "k-1"}},
					request{port: tt.port, method: m, header: map[string]string{"idempotency-key": "k-2"}},
					request{port: tt.port, method: m, header: map[string]string{"Idempotency-Key": ""}})
			}
			for _, r := range requests {
				names := e.picked(t, "shop", "geo", r)
				if len(names) != 1 {
					t.Fatalf("%s: routes %v, want one (none is a 404)", r, names)
				}
				ann := annotationsOf(e.find("HTTPRoute", "shop", names[0]))
				key, _ := headerValue(r.header, "Idempotency-Key")
				safe := slices.Contains(safeMethods, r.method) || key != ""
				if retried := ann[annRetryLimit] != nil; retried != (safe && tt.retries) {
					t.Errorf("%s: route %s with retry annotations %v, want %v", r, names[0], retried, safe && tt.retries)
				}
				if got, _ := ann[annRequestTimeout].(string); got != tt.timeout {
					t.Errorf("%s: route %s has timeout %q, want %q", r, names[0], got, tt.timeout)
				}
			}
		})
	}
}

// TestSplitRoutesKeepPolicies: a retrying policy without a port applies
// on every port of its Service in Linkerd, where routes that match alike
// are picked by age, then name. Its split routes must not outrank,
// on a port, the route of a policy for that port (minimesh applies
// that one there), nor that of another spelling of the Service.
func TestSplitRoutesKeepPolicies(t *testing.T) {
	for _, tt := range []struct {
		name, src string
		port      int
		want      string // a route every request may go to
		comments  []string
	}{
		{
			name: "a port without retries",
			src: pol("name: geo, namespace: shop", "{service: geo, timeout: 1s, retries: {attempts: 2, retryOn: [5xx]}}") +
				pol("name: geo-admin, namespace: shop", "{service: geo:9090, timeout: 30s}"),
			port: 9090, want: "geo-admin",
			comments: []string{"HTTPRoute shop/geo-admin also matches GET, HEAD, OPTIONS, TRACE, PUT, DELETE requests"},
		},
		{
			name: "another spelling without retries",
			src: pol("name: geo, namespace: shop", "{service: geo, retries: {attempts: 2, retryOn: [5xx]}}") +
				pol("name: geo-fqdn, namespace: shop", "{service: geo.shop.svc.cluster.local, timeout: 5s}"),
			port: 80, want: "geo-fqdn",
		},
		{
			name: "a port that retries",
			src: pol("name: geo, namespace: shop", "{service: geo, timeout: 1s}") +
				pol("name: geo-admin, namespace: shop", "{service: geo:9090, timeout: 30s, retries: {attempts: 2, retryOn: [5xx]}}"),
			port: 9090, want: "geo-admin",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := exportYAML(t, tt.src)
			for _, m := range append(slices.Clone(safeMethods), unsafeMethods...) {
				for _, h := range []map[string]string{nil, {"Idempotency-Key": "k"}} {
					r := request{port: tt.port, method: m, header: h}
					names := e.picked(t, "shop", "geo", r)
					if !slices.ContainsFunc(names, func(n string) bool { return n == tt.want || n == tt.want+"-no-retry" }) {
						t.Errorf("%s: routes %v, want %s among them\n%s", r, names, tt.want, e.comments)
					}
				}
			}
			for _, c := range tt.comments {
				if !strings.Contains(e.comments, c) {
					t.Errorf("comments lack %q:\n%s", c, e.comments)
				}
			}
		})
	}
}

// TestSplitRouteNames: the second HTTPRoute of a retrying policy has a
// name of its own, valid, and unique in its namespace, even when another
// policy has it or the first name is as long as Kubernetes allows.
func TestSplitRouteNames(t *testing.T) {
	long := strings.Repeat("a", maxNameLen)
	for _, tt := range []struct {
		name, src string
		want      []string // HTTPRoute names in namespace shop, in order
	}{
		{"plain", pol("name: geo, namespace: shop", "{service: geo, retries: {attempts: 1, retryOn: [5xx]}}"), []string{"geo", "geo-no-retry"}},
		{"taken", pol("name: geo, namespace: shop", "{service: geo, retries: {attempts: 1, retryOn: [5xx]}}") +
			pol("name: geo-no-retry, namespace: shop", "{service: maps, timeout: 1s}"), []string{"geo", "geo-no-retry-2", "geo-no-retry"}},
		{"unnamed", pol("namespace: shop", "{service: geo:8080, retries: {attempts: 1, retryOn: [5xx]}}"), []string{"geo-8080", "geo-8080-no-retry"}},
		{"longest", pol("name: "+long+", namespace: shop", "{service: geo, retries: {attempts: 1, retryOn: [5xx]}}"),
			[]string{long, long[:maxNameLen-len("-no-retry")] + "-no-retry"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := exportYAML(t, tt.src)
			var got []string
			for _, d := range e.docs {
				if d["kind"] != "HTTPRoute" {
					continue
				}
				name := d["metadata"].(map[string]any)["name"].(string)
				if !dns1123Subdomain.MatchString(name) || len(name) > maxNameLen {
					t.Errorf("HTTPRoute name %q is not a DNS-1123 subdomain", name)
				}
				got = append(got, name)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("HTTPRoutes %q, want %q\n%s", got, tt.want, e.comments)
			}
		})
	}
}

// TestServiceRetryTimeoutInherited: Linkerd gives a Service's
// retry.linkerd.io/limit and timeout (written for gRPC retries) to every
// route without retry annotations of its own, so the route of the
// requests that must not be retried would retry a POST whose try timed
// out; the export says so.
func TestServiceRetryTimeoutInherited(t *testing.T) {
	e := exportYAML(t, pol("name: pay, namespace: shop", "{service: pay, timeout: 3s, retries: {attempts: 2, perTryTimeout: 1s, retryOn: [5xx, grpc-unavailable]}}"))
	if got := annotationsOf(e.find("Service", "shop", "pay"))[annRetryTimeout]; got != "1s" {
		t.Fatalf("Service retry timeout %v, want 1s", got)
	}
	for _, c := range []string{
		"# not carried over: retry.linkerd.io/timeout (1s) and retry.linkerd.io/limit (2) on Service shop/pay",
		"(shop/pay-no-retry)",
		"retryOn gRPC codes (unavailable): written as retry.linkerd.io/grpc on the Service, which Linkerd applies only through GRPCRoutes",
	} {
		if !strings.Contains(e.comments, c) {
			t.Errorf("comments lack %q:\n%s", c, e.comments)
		}
	}
	// Without a per-try timeout the Service has a limit alone, which
	// retries only what was never sent: no comment.
	e = exportYAML(t, pol("name: pay, namespace: shop", "{service: pay, timeout: 3s, retries: {attempts: 2, retryOn: [5xx, grpc-unavailable]}}"))
	if strings.Contains(e.comments, "on Service shop/pay, written for its gRPC retries") {
		t.Errorf("a comment on an inherited retry timeout the Service does not have:\n%s", e.comments)
	}
}

// TestExportDeterministic: the same policies give the same bytes.
func TestExportDeterministic(t *testing.T) {
	src := pol("name: geo, namespace: shop", "{service: geo, timeout: 1s, retries: {attempts: 2, perTryTimeout: 200ms, retryOn: [5xx, grpc-unavailable]}}") +
		pol("name: geo-admin, namespace: shop", "{service: geo:9090, timeout: 30s}") +
		pol("name: geo-no-retry, namespace: shop", "{service: maps, retries: {attempts: 1, retryOn: [503]}}")
	export := func() string {
		pols, err := policy.Decode("p.yaml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		out, err := Export(pols, "", "")
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	first := export()
	for range 20 {
		if export() != first {
			t.Fatal("two exports of the same policies differ")
		}
	}
}

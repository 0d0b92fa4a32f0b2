package linkerd

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/policy"
)

// exported is one Export run, split into what kubectl reads (the
// documents) and what a person reads (the comments).
type exported struct {
	docs     []map[string]any
	comments string
}

// find returns the document of that kind, namespace and name, or nil.
func (e exported) find(kind, ns, name string) map[string]any {
	for _, d := range e.docs {
		m, _ := d["metadata"].(map[string]any)
		if d["kind"] == kind && m["namespace"] == ns && m["name"] == name {
			return d
		}
	}
	return nil
}

// count counts the documents of a kind.
func (e exported) count(kind string) int {
	n := 0
	for _, d := range e.docs {
		if d["kind"] == kind {
			n++
		}
	}
	return n
}

func annotationsOf(d map[string]any) map[string]any {
	if d == nil {
		return nil
	}
	a, _ := d["metadata"].(map[string]any)["annotations"].(map[string]any)
	return a
}

// exportYAML decodes policies (one YAML stream) and exports them.
func exportYAML(t *testing.T, src string) exported {
	t.Helper()
	return exportIn(t, src, "", "")
}

// exportIn is exportYAML for the pods of ns, with clusterNS the
// controller's namespace (Export's arguments).
func exportIn(t *testing.T, src, ns, clusterNS string) exported {
	t.Helper()
	pols, err := policy.Decode("p.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	out, err := Export(pols, ns, clusterNS)
	if err != nil {
		t.Fatal(err)
	}
	var e exported
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var body []string
		for _, line := range strings.Split(doc, "\n") {
			if strings.HasPrefix(line, "#") {
				e.comments += line + "\n"
			} else if line != "---" {
				body = append(body, line)
			}
		}
		var m map[string]any
		if err := yaml.Unmarshal([]byte(strings.Join(body, "\n")), &m); err != nil {
			t.Fatalf("document does not parse: %v\n%s", err, doc)
		}
		if m != nil {
			e.docs = append(e.docs, m)
		}
	}
	return e
}

// pol writes one ResiliencePolicy document; meta is the flow mapping's
// inside ("name: a, namespace: shop").
func pol(meta, spec string) string {
	return "---\napiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {" + meta + "}\nspec: " + spec + "\n"
}

// dns1123Subdomain is the shape Kubernetes wants of an object name.
var dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// TestRetriesCarriedOver: a policy that retries on timeouts alone (and
// connect failures, which Linkerd's retries do not cover) still gets
// Linkerd's timeout-driven retries: retry.linkerd.io/limit with
// retry.linkerd.io/timeout and no retry.linkerd.io/http (Linkerd's
// reference, "Retries": the timeout cancels a try and retries it). The
// comments never name an annotation the export did not write.
func TestRetriesCarriedOver(t *testing.T) {
	for _, tt := range []struct {
		name, spec string
		want       map[string]any // route annotations; nil: no HTTPRoute
		comments   []string       // substrings of the comments
		noComments []string
	}{
		{
			name: "timeout-only retries",
			spec: "{service: geo, retries: {attempts: 3, perTryTimeout: 500ms, retryOn: [connect-failure, timeout]}}",
			want: map[string]any{annRetryLimit: "3", annRetryTimeout: "500ms"},
			comments: []string{
				"retryOn connect-failure: Linkerd does not retry connection errors",
				"last try",
			},
			noComments: []string{"retryOn timeout"},
		},
		{
			name: "status codes and per-try timeout",
			spec: "{service: geo, retries: {attempts: 2, perTryTimeout: 1s, retryOn: [5xx, timeout]}}",
			want: map[string]any{annRetryHTTP: "5xx", annRetryLimit: "2", annRetryTimeout: "1s"},
		},
		{
			name:     "per-try timeout without timeout in retryOn",
			spec:     "{service: geo, retries: {attempts: 2, perTryTimeout: 1s, retryOn: [503]}}",
			want:     map[string]any{annRetryHTTP: "503", annRetryLimit: "2", annRetryTimeout: "1s"},
			comments: []string{"retryOn has no timeout: Linkerd also retries a try that exceeds retry.linkerd.io/timeout"},
		},
		{
			name:     "timeout in retryOn without a per-try timeout",
			spec:     "{service: geo, timeout: 2s, retries: {attempts: 2, retryOn: [timeout]}}",
			want:     map[string]any{annRequestTimeout: "2s"},
			comments: []string{"retryOn timeout without perTryTimeout"},
		},
		{
			name:     "connection errors only",
			spec:     "{service: geo, retries: {attempts: 2, retryOn: [connect-failure, reset]}}",
			comments: []string{"retryOn connect-failure", "retryOn reset"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := exportYAML(t, pol("name: geo, namespace: shop", tt.spec))
			route := e.find("HTTPRoute", "shop", "geo")
			if tt.want == nil {
				if route != nil {
					t.Fatalf("an HTTPRoute %v, want none\n%s", route, e.comments)
				}
			} else if got := annotationsOf(route); !equalAnn(got, tt.want) {
				t.Errorf("route annotations %v, want %v\n%s", got, tt.want, e.comments)
			}
			for _, c := range tt.comments {
				if !strings.Contains(e.comments, c) {
					t.Errorf("comments lack %q:\n%s", c, e.comments)
				}
			}
			for _, c := range tt.noComments {
				if strings.Contains(e.comments, c) {
					t.Errorf("comments have %q:\n%s", c, e.comments)
				}
			}
			// A comment may only name a retry annotation that was written.
			for _, ann := range []string{annRetryTimeout, annRetryLimit, annRetryHTTP} {
				if strings.Contains(e.comments, ann) && annotationsOf(route)[ann] == nil {
					t.Errorf("comments name %s, which no document has:\n%s", ann, e.comments)
				}
			}
		})
	}
}

func equalAnn(got, want map[string]any) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// TestPerTryTimeoutWithoutRetries: docs/policy.md says perTryTimeout
// still applies with attempts 0. Linkerd has no annotation that bounds a
// single try without retrying it, so the export says so in a comment
// and writes no retry annotation (a retry.linkerd.io/limit of 0 is read
// as Linkerd's default, 1, which would add a retry).
func TestPerTryTimeoutWithoutRetries(t *testing.T) {
	e := exportYAML(t, pol("name: orders, namespace: shop", "{service: orders, timeout: 2s, retries: {attempts: 0, perTryTimeout: 500ms}}"))
	if got, want := annotationsOf(e.find("HTTPRoute", "shop", "orders")), map[string]any{annRequestTimeout: "2s"}; !equalAnn(got, want) {
		t.Errorf("route annotations %v, want %v", got, want)
	}
	if !strings.Contains(e.comments, "# not carried over: retries.perTryTimeout (500ms) with attempts 0") {
		t.Errorf("no comment on the per-try timeout:\n%s", e.comments)
	}
}

// TestRouteNames: metadata.name is optional, and kubectl rejects an
// object without a name, so the export derives one from the service
// (and port); two policies that would share a name in one namespace get
// distinct ones instead of overwriting each other's HTTPRoute.
func TestRouteNames(t *testing.T) {
	for _, tt := range []struct {
		name, src string
		want      []string // HTTPRoute names in namespace shop
	}{
		{"no name", pol("namespace: shop", "{service: auth-service, timeout: 1s}"), []string{"auth-service"}},
		{"no name, port", pol("namespace: shop", "{service: auth-service:8080, timeout: 1s}"), []string{"auth-service-8080"}},
		{"no name, qualified", pol("namespace: shop", "{service: auth.other.svc.cluster.local:80, timeout: 1s}"), []string{"auth-80"}},
		// A consumer route goes in the policy's namespace, not the Service's.
		{"no name, another namespace's", pol("namespace: other", "{service: auth.shop.svc.cluster.local:80, timeout: 1s}"), nil},
		{"same name", pol("name: orders, namespace: shop", "{service: orders:8000, timeout: 2s}") +
			pol("name: orders, namespace: shop", "{service: orders:9000, timeout: 4s}"), []string{"orders", "orders-9000"}},
		// Both routes are shop's (geo.maps's a consumer route).
		{"same name, Services of two namespaces", pol("name: geo, namespace: shop", "{service: geo, timeout: 2s}") +
			pol("name: geo, namespace: shop", "{service: geo.maps, timeout: 4s}"), []string{"geo", "geo-2"}},
		{"derived name taken", pol("name: orders-9000, namespace: shop", "{service: orders:8000, timeout: 2s}") +
			pol("namespace: shop", "{service: orders:9000, timeout: 4s}"), []string{"orders-9000", "orders-9000-2"}},
		{"invalid name", pol("name: Orders_API, namespace: shop", "{service: orders, timeout: 2s}"), []string{"orders-api"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := exportYAML(t, tt.src)
			var got []string
			for _, d := range e.docs {
				m := d["metadata"].(map[string]any)
				if d["kind"] != "HTTPRoute" {
					continue
				}
				name, _ := m["name"].(string)
				if !dns1123Subdomain.MatchString(name) {
					t.Errorf("HTTPRoute name %q is not a DNS-1123 subdomain", name)
				}
				if m["namespace"] == "shop" {
					got = append(got, name)
				}
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("HTTPRoutes in shop %q, want %q\n%s", got, tt.want, e.comments)
			}
		})
	}
}

// TestServicePerService: Linkerd reads failure accrual from the Service's
// annotations, for all its ports, so two policies for two ports of one
// Service make one Service document, and a comment names the conflict
// and the value kept.
func TestServicePerService(t *testing.T) {
	for _, tt := range []struct {
		name, src    string
		wantFailures string
		comments     []string
	}{
		{
			name: "two ports, two accruals",
			src: pol("name: orders, namespace: shop", "{service: orders:8000, timeout: 2s}") +
				pol("name: orders, namespace: shop", "{service: orders:9000, timeout: 4s, outlierDetection: {consecutiveFailures: 9}}"),
			wantFailures: "5",
			comments:     []string{"Linkerd's failure accrual is per Service", "orders:8000"},
		},
		{
			// Neither spelling is canonical in shop (that is orders,
			// which would win: TestAccrualFollowsCanonicalSpelling).
			name: "a policy without a port wins",
			src: pol("name: a, namespace: shop", "{service: 'orders.shop.svc:8000', outlierDetection: {consecutiveFailures: 3}}") +
				pol("name: b, namespace: shop", "{service: orders.shop.svc.cluster.local, outlierDetection: {consecutiveFailures: 7}}"),
			wantFailures: "7",
			comments:     []string{"Linkerd's failure accrual is per Service"},
		},
		{
			name: "the same accrual twice",
			src: pol("name: a, namespace: shop", "{service: orders:8000}") +
				pol("name: b, namespace: shop", "{service: orders:9000}"),
			wantFailures: "5",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := exportYAML(t, tt.src)
			if n := e.count("Service"); n != 1 {
				t.Fatalf("%d Service documents, want 1\n%s", n, e.comments)
			}
			if got := annotationsOf(e.find("Service", "shop", "orders"))[annMaxFailures]; got != tt.wantFailures {
				t.Errorf("max-failures %v, want %s\n%s", got, tt.wantFailures, e.comments)
			}
			for _, c := range tt.comments {
				if !strings.Contains(e.comments, c) {
					t.Errorf("comments lack %q:\n%s", c, e.comments)
				}
			}
			if len(tt.comments) == 0 && strings.Contains(e.comments, "per Service") {
				t.Errorf("a conflict comment without a conflict:\n%s", e.comments)
			}
		})
	}
}

// TestDurationsRoundUp: Linkerd's durations are whole milliseconds (or
// coarser). A shorter or fractional one rounds up, never down to 0ms,
// which Linkerd reads as no timeout at all, and a comment says so.
func TestDurationsRoundUp(t *testing.T) {
	e := exportYAML(t, pol("name: tiny, namespace: shop", "{service: tiny, timeout: 500us, retries: {attempts: 2, perTryTimeout: 400us, retryOn: [5xx]}, outlierDetection: {baseEjectionTime: 1500us, maxEjectionTime: 2500us}}"))
	if got, want := annotationsOf(e.find("HTTPRoute", "shop", "tiny")), map[string]any{annRequestTimeout: "1ms", annRetryHTTP: "5xx", annRetryLimit: "2", annRetryTimeout: "1ms"}; !equalAnn(got, want) {
		t.Errorf("route annotations %v, want %v", got, want)
	}
	svc := annotationsOf(e.find("Service", "shop", "tiny"))
	if svc[annMinPenalty] != "2ms" || svc[annMaxPenalty] != "3ms" {
		t.Errorf("penalties %v, %v; want 2ms, 3ms", svc[annMinPenalty], svc[annMaxPenalty])
	}
	for _, c := range []string{"timeout (500µs)", "retries.perTryTimeout (400µs)", "outlierDetection.baseEjectionTime (1.5ms)"} {
		if !strings.Contains(e.comments, c) {
			t.Errorf("comments lack %q:\n%s", c, e.comments)
		}
	}
}

// TestExternalHosts: a host that is not a Service's name by the policy
// package's reading (policy.ServiceFQDN) is an external host that
// matches only itself, and gets a comment, not another Service's route.
func TestExternalHosts(t *testing.T) {
	for _, service := range []string{"a.b.cluster.local", "a.b.svc.cluster", "api.example.com:443", "10.0.0.1:80"} {
		t.Run(service, func(t *testing.T) {
			e := exportYAML(t, pol("name: ext, namespace: shop", "{service: '"+service+"', timeout: 4s}"))
			if len(e.docs) != 0 {
				t.Errorf("documents %v, want none", e.docs)
			}
			if !strings.Contains(e.comments, "is not a cluster Service") {
				t.Errorf("no comment:\n%s", e.comments)
			}
		})
	}
}

// TestBackoff: Linkerd's policy controller gives every retrying route a
// backoff of its own that no annotation changes, and it is not the
// sidecar's even at minimesh's default bounds: Linkerd waits the
// exponential step plus up to as much again (jitter ratio 1.0), never
// past 250 ms in all (the proxy cuts the jitter at the maximum), the
// sidecar a random time up to the step. Every retrying policy is told
// so, with both formulas (it was told the default was the same, then
// that the jitter could take a wait past 250 ms).
func TestBackoff(t *testing.T) {
	const doc = "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo, namespace: shop}\nspec:\n  service: geo\n  retries: {attempts: 2, retryOn: [5xx], backoff: %s}\n"
	const formulas = "before retry n, the first included, it waits min(250ms, 25ms·2^(n-1)) plus up to as much again, never past 250ms in all (jitter ratio 1.0); the sidecar waits a random time in (0, min(max, base·2^(n-1))]\n"
	for _, tt := range []struct{ backoff, want string }{
		{"{base: 25ms, max: 250ms}", "# not carried over: retries.backoff (25ms-250ms): Linkerd's backoff is fixed (no annotation changes it): " + formulas},
		{"{base: 100ms, max: 2s}", "# not carried over: retries.backoff (100ms-2s): Linkerd's backoff is fixed (no annotation changes it): " + formulas},
	} {
		e := exportYAML(t, fmt.Sprintf(doc, tt.backoff))
		if !strings.Contains(e.comments, tt.want) {
			t.Errorf("backoff %s: comments\n%s\nwant %q", tt.backoff, e.comments, tt.want)
		}
	}
}

package outbound

import (
	"strings"
	"testing"
)

// TestCanonicalKeepsInvalidBytes: a host that is not UTF-8 keeps its
// invalid bytes, lowered in its ASCII only, so that the metrics see a
// name that cannot be a label (counted as "other", docs/metrics.md) and
// two such hosts keep a breaker each. Before, strings.ToLower turned the
// bytes into U+FFFD: "ge\xffo:80" and "ge\xfeo:80" were both the valid
// label "ge\ufffdo:80", with series and a breaker of their own.
func TestCanonicalKeepsInvalidBytes(t *testing.T) {
	for _, tc := range []struct{ authority, ns, want string }{
		{"ge\xffo:80", "", "ge\xffo:80"},
		{"GE\xffO:80", "", "ge\xffo:80"},
		{"ge\xfeo:80", "", "ge\xfeo:80"},
		{"\xffAuth.Shop.svc.cluster.local.:80", "shop", "\xffauth:80"},
		{"Auth.Shop.SVC.cluster.local:80", "shop", "auth:80"},
		{"ÉCOLE:80", "", "école:80"}, // valid UTF-8: lowered as before
		{"auth", "", "auth"},
	} {
		if got := canonical(tc.authority, tc.ns); got != tc.want {
			t.Errorf("canonical(%q, %q) = %q, want %q", tc.authority, tc.ns, got, tc.want)
		}
	}
	if a, b := canonical("ge\xffo:80", ""), canonical("ge\xfeo:80", ""); a == b {
		t.Errorf("two hosts differing in their invalid bytes share the name %q", a)
	}
	if strings.Contains(canonical("GE\xffO:80", ""), "\uFFFD") {
		t.Error("canonical made U+FFFD of an invalid byte")
	}
}

// TestLowerHostAllocs: the per-request path allocates no more than
// strings.ToLower did: nothing for a name already lower case, whether
// UTF-8 or not.
func TestLowerHostAllocs(t *testing.T) {
	for _, host := range []string{"auth.shop.svc.cluster.local", "école", "ge\xffo"} {
		if n := testing.AllocsPerRun(100, func() { _ = lowerHost(host) }); n != 0 {
			t.Errorf("lowerHost(%q): %v allocations, want 0", host, n)
		}
	}
}

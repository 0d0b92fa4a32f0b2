package policy

import "testing"

func TestServiceFQDN(t *testing.T) {
	for _, tc := range []struct {
		host, ns, want string
	}{
		{"backend", "shop", "backend.shop.svc.cluster.local"},
		{"backend.other", "shop", "backend.other.svc.cluster.local"},
		{"backend.other.svc", "shop", "backend.other.svc.cluster.local"},
		{"backend.other.svc.cluster.local", "shop", "backend.other.svc.cluster.local"},
		{"backend", "", ""},
		{"api.example.com", "shop", ""},
		{"a.b.c.d", "shop", ""},
		{"10.0.0.1", "shop", ""},
		{"1.2", "shop", ""},
		{"", "shop", ""},
		{"backend.other.svc.cluster", "shop", ""},
	} {
		got, ok := ServiceFQDN(tc.host, tc.ns)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("ServiceFQDN(%q, %q) = %q, %v; want %q", tc.host, tc.ns, got, ok, tc.want)
		}
	}
}

package policy

import (
	"strings"
	"testing"
)

func pol(service string) *ResiliencePolicy {
	return &ResiliencePolicy{Spec: Spec{Service: service, CircuitBreaker: DefaultCircuitBreaker()}, Source: service}
}

func TestLookup(t *testing.T) {
	ps := []*ResiliencePolicy{
		pol("auth-service"),
		pol("auth-service:8000"),
		pol("orders-service.shop"),
		pol("tenant-service.bakery"),
		pol("api.example.com"),
		pol("users-service.bakery.svc.cluster.local"),
		pol("users-service"),
		pol("10.0.0.1"),
		pol("*"),
	}
	table := NewTable(ps, "bakery")
	tests := []struct{ authority, want string }{
		{"auth-service", "auth-service"},
		{"auth-service:9000", "auth-service"},
		{"auth-service.bakery", "auth-service"},
		{"auth-service.bakery.svc", "auth-service"},
		{"auth-service.bakery.svc.cluster.local", "auth-service"},
		{"auth-service.bakery.svc.cluster.local.", "auth-service"},
		{"auth-service:8000", "auth-service:8000"},
		{"auth-service.bakery:8000", "auth-service:8000"},
		{"auth-service.bakery.svc:8000", "auth-service:8000"},
		{"auth-service.bakery.svc.cluster.local:8000", "auth-service:8000"},
		{"AUTH-Service.Bakery.svc.cluster.local.:8000", "auth-service:8000"},
		{"auth-service.other", "*"},
		{"auth-service.other:8000", "*"},
		{"auth-service.bakery.svc.cluster", "*"},

		{"orders-service", "*"}, // another namespace's service
		{"orders-service.shop", "orders-service.shop"},
		{"orders-service.shop.svc:80", "orders-service.shop"},
		{"orders-service.shop.svc.cluster.local", "orders-service.shop"},

		{"tenant-service", "tenant-service.bakery"}, // the sidecar's own namespace
		{"tenant-service.bakery.svc.cluster.local:8080", "tenant-service.bakery"},

		{"api.example.com:443", "api.example.com"},
		{"api.example.com.", "api.example.com"},
		{"api", "*"},
		{"api.example.com.svc.cluster.local", "*"},

		// Two spellings of one service: the one written like the
		// authority wins, then the more qualified.
		{"users-service.bakery.svc.cluster.local", "users-service.bakery.svc.cluster.local"},
		{"users-service", "users-service"},
		{"users-service.bakery", "users-service.bakery.svc.cluster.local"},

		{"10.0.0.1:80", "10.0.0.1"},
		{"[::1]:80", "*"},
		{"[::1]", "*"},
		{"::1", "*"},
		{"[", "*"},
		{"", "*"},
		{":80", "*"},
	}
	for _, tt := range tests {
		if got := table.Lookup(tt.authority); got.Spec.Service != tt.want {
			t.Errorf("Lookup(%q) = %q, want %q", tt.authority, got.Spec.Service, tt.want)
		}
	}
}

func TestLookupDefaults(t *testing.T) {
	table := NewTable([]*ResiliencePolicy{pol("x-service")}, "")
	if got := table.Lookup("x-service.default.svc.cluster.local"); got.Spec.Service != "x-service" {
		t.Errorf("empty namespace is not default: got %q", got.Spec.Service)
	}
	def := table.Lookup("elsewhere")
	if def == nil || def.Source != "built-in default" || def.Spec.CircuitBreaker == nil {
		t.Fatalf("no built-in default: %+v", def)
	}
	if table.Lookup("other:1") != def {
		t.Error("built-in default is not shared")
	}
	if NewTable(nil, "ns").Lookup("x") == nil {
		t.Error("empty table returned nil")
	}
}

func TestLookupFirstWins(t *testing.T) {
	a, b := pol("x"), pol("x")
	table := NewTable([]*ResiliencePolicy{a, b}, "ns")
	if table.Lookup("x") != a {
		t.Error("second policy of a service won")
	}
	if n := len(table.Policies()); n != 2 { // a and the built-in default
		t.Errorf("Policies has %d entries, want 2", n)
	}
}

func TestPolicies(t *testing.T) {
	table := NewTable([]*ResiliencePolicy{pol("b"), pol("*"), pol("a:80"), pol("a")}, "ns")
	var got []string
	for _, p := range table.Policies() {
		got = append(got, p.Spec.Service)
	}
	if want := "a a:80 b *"; strings.Join(got, " ") != want {
		t.Errorf("Policies = %q, want %q", strings.Join(got, " "), want)
	}
	table.Policies()[0] = nil
	if table.Policies()[0] == nil {
		t.Error("Policies exposes the table's slice")
	}
}

var lookupAuthorities = []string{
	"auth-service:8000",
	"auth-service.bakery.svc.cluster.local:8000",
	"tenant-service.bakery.svc.cluster.local.",
	"unknown-service:80",
	"[::1]:8080",
}

func lookupTable() *Table {
	return NewTable([]*ResiliencePolicy{
		pol("auth-service"), pol("auth-service:8000"), pol("tenant-service"), pol("*"),
	}, "bakery")
}

// TestLookupDoesNotAllocate guards the hot path: Lookup runs on every
// proxied request.
func TestLookupDoesNotAllocate(t *testing.T) {
	table := lookupTable()
	for _, a := range lookupAuthorities {
		if n := testing.AllocsPerRun(100, func() { table.Lookup(a) }); n != 0 {
			t.Errorf("Lookup(%q) allocates %v times", a, n)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	table := lookupTable()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		table.Lookup(lookupAuthorities[i%len(lookupAuthorities)])
	}
}

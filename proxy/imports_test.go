// Package proxy_test guards the direction of imports that DESIGN.md sets:
// the sidecar stays small, so nothing under proxy/ may depend on
// Kubernetes' client libraries or on the injector.
package proxy_test

import (
	"os/exec"
	"strings"
	"sync"
	"testing"
)

func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/") || strings.HasPrefix(pkg, "github.com/minimesh/minimesh/injector") {
			t.Errorf("the sidecar depends on %s", pkg)
		}
	}
}

// sidecarDeps is every package minimesh-proxy links, listed once for the
// tests below.
var sidecarDeps = sync.OnceValues(func() ([]string, error) {
	out, err := exec.Command("go", "list", "-deps", "./cmd/minimesh-proxy").Output()
	return strings.Fields(string(out)), err
})

// noLinks fails t for each package of the sidecar that is banned or under
// a banned path.
func noLinks(t *testing.T, banned ...string) {
	t.Helper()
	deps, err := sidecarDeps()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range deps {
		for _, b := range banned {
			if pkg == strings.TrimSuffix(b, "/") || strings.HasPrefix(pkg, strings.TrimSuffix(b, "/")+"/") {
				t.Errorf("the sidecar links %s", pkg)
			}
		}
	}
}

// TestSidecarLinksNoGRPC: the sidecar's binary links neither grpc-go nor
// Envoy's or OTLP's generated types. They were 10 MB of its 22 MB binary
// and 8 MB of its 20 MB idle RSS (issue 16; docs/benchmarks.md, "Memory at
// idle and under load"); the xDS client and the span exporter speak their
// few messages field by field over internal/grpcwire instead.
func TestSidecarLinksNoGRPC(t *testing.T) {
	noLinks(t, "google.golang.org/grpc", "github.com/envoyproxy", "github.com/cncf/xds",
		"go.opentelemetry.io/proto", "go.opentelemetry.io/otel/exporters", "google.golang.org/genproto")
}

// TestSidecarLinksNoPrometheusClient: the sidecar serves its metrics with
// internal/promtext, not github.com/prometheus/client_golang, which with
// client_model brings in the protobuf runtime and its type registry: ~2 MB
// of binary pages and init-time heap against a 15 MB RSS target at 1,000
// req/s (docs/metrics.md). internal/protoenc's field appenders need only
// google.golang.org/protobuf/encoding/protowire, which has no registry.
func TestSidecarLinksNoPrometheusClient(t *testing.T) {
	noLinks(t, "github.com/prometheus", "google.golang.org/protobuf/reflect/protoregistry",
		"google.golang.org/protobuf/proto", "google.golang.org/protobuf/runtime")
}

// TestSidecarLinksNoHTTPPprof: the admin port serves Go's profiles from
// runtime/pprof (proxy/admin/pprof.go), not net/http/pprof, whose delta
// profiles link internal/profile: with the package, 0.25 MB of binary and
// 0.2-0.4 MB of RSS (docs/benchmarks.md, "Go's profiler without
// net/http/pprof").
func TestSidecarLinksNoHTTPPprof(t *testing.T) {
	noLinks(t, "net/http/pprof", "internal/profile")
}

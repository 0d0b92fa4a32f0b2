package wellknown

import "testing"

// TestValidHostPort pins the rule the sidecar applies to --xds-address
// and --otlp-endpoint at start, and the injector to its config.
func TestValidHostPort(t *testing.T) {
	for v, want := range map[string]bool{
		"jaeger:4317":        true,
		"10.0.0.1:1":         true,
		"[fd00::1]:65535":    true,
		":4317":              true,
		"jaeger:0":           false,
		"jaeger:65536":       false,
		"jaeger:99999":       false,
		"jaeger:-1":          false,
		"jaeger:+4317":       false,
		"jaeger:otlp":        false,
		"jaeger:":            false,
		"jaeger":             false,
		"":                   false,
		"fd00::1:4317":       false,
		"http://jaeger:4317": false,
	} {
		if got := ValidHostPort(v); got != want {
			t.Errorf("ValidHostPort(%q) = %v, want %v", v, got, want)
		}
	}
}

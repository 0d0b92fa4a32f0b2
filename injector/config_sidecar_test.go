package injector

import (
	"strings"
	"testing"
)

// TestConfigRefusesWhatTheSidecarRefuses: a config value the sidecar
// would refuse at start, or could not listen on, keeps every injected pod
// from starting; Validate refuses it instead, naming the field.
func TestConfigRefusesWhatTheSidecarRefuses(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "": accepted
	}{
		{"otlpEndpoint: jaeger:4317\n", ""},
		{"otlpEndpoint: '[fd00::1]:4317'\n", ""},
		{"otlpEndpoint: ':4317'\n", ""},
		{"otlpEndpoint: jaeger:99999\n", `otlpEndpoint: "jaeger:99999": want HOST:PORT with a port from 1 to 65535`},
		{"otlpEndpoint: jaeger:65536\n", `otlpEndpoint: "jaeger:65536"`},
		{"otlpEndpoint: ':0'\n", `otlpEndpoint: ":0"`},
		{"otlpEndpoint: jaeger\n", `otlpEndpoint: "jaeger"`},
		{"otlpEndpoint: 'jaeger:'\n", `otlpEndpoint: "jaeger:"`},
		{"otlpEndpoint: jaeger:otlp\n", `otlpEndpoint: "jaeger:otlp"`},
		{"otlpEndpoint: 'http://jaeger:4317'\n", `otlpEndpoint: "http://jaeger:4317"`},
		{"otlpEndpoint: 'fd00::1:4317'\n", `otlpEndpoint: "fd00::1:4317"`},
		{"xdsAddress: minimesh-controller.minimesh:15010\n", ""},
		{"xdsAddress: minimesh-controller.minimesh\n", `xdsAddress: "minimesh-controller.minimesh"`},
		{"xdsAddress: 'controller:0'\n", `xdsAddress: "controller:0"`},
		// The sidecar's own ports: at least 1024 (minSidecarPort).
		{"proxy:\n  adminPort: 1024\n", ""},
		{"proxy:\n  adminPort: 80\n", "proxy.adminPort: 80 is below 1024: the sidecar runs as a non-root user"},
		{"proxy:\n  outboundPort: 1023\n", "proxy.outboundPort: 1023 is below 1024"},
		{"proxy:\n  inboundPort: 443\n", "proxy.inboundPort: 443 is below 1024"},
		{"proxy:\n  inboundPort: 0\n", "proxy.inboundPort: 0 is not a port (1-65535)"},
	} {
		_, err := ParseConfig([]byte(tc.in))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("ParseConfig(%q) = %v, want it accepted", tc.in, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("ParseConfig(%q) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

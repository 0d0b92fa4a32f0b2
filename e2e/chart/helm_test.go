// Package chart_test proves the Helm chart: helm lint, golden renders of
// every option, the schema's refusals, and, against a real API server,
// install, injection through the chart's webhook, upgrade, uninstall and
// `minimesh check` on good and broken installs.
package chart_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/e2e/internal/proc"
)

const chartDir = "../../charts/minimesh"

// helmEnv keeps helm's config, cache and data in the test's directory, so
// that no run depends on or changes the user's repositories.
func helmEnv(t testing.TB) []string {
	dir := t.TempDir()
	return append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(dir, "config"),
		"HELM_CACHE_HOME="+filepath.Join(dir, "cache"),
		"HELM_DATA_HOME="+filepath.Join(dir, "data"),
	)
}

// helm runs the real helm and returns its combined output.
func helm(t testing.TB, args ...string) (string, error) {
	t.Helper()
	bin := proc.NeedTool(t, "helm")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = helmEnv(t)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// template renders the chart as `helm template` would for a cluster of
// version 1.37 (the chart requires >= 1.29; helm's offline default is
// older).
func template(t testing.TB, args ...string) (string, error) {
	return helm(t, append([]string{"template", "minimesh", chartDir, "--namespace", "minimesh", "--kube-version", "1.37.0"}, args...)...)
}

// generated masks what genCA and genSignedCert make anew on every render,
// and the injector's checksum of them.
var (
	generated   = regexp.MustCompile(`(?m)^(\s*(?:ca\.crt|tls\.crt|tls\.key|caBundle): )LS0t[A-Za-z0-9+/=]+$`)
	tlsChecksum = regexp.MustCompile(`(?m)^(\s*checksum/tls: )[0-9a-f]{64}$`)
)

func mask(s string) string {
	return tlsChecksum.ReplaceAllString(generated.ReplaceAllString(s, "${1}<generated>"), "${1}<sha256>")
}

func TestLint(t *testing.T) {
	for _, args := range [][]string{nil, {"--set", "webhook.url=https://127.0.0.1:8443/inject", "--set", "webhook.caBundle=Q0E="}} {
		out, err := helm(t, append([]string{"lint", chartDir, "--strict", "--kube-version", "1.37.0"}, args...)...)
		if err != nil {
			t.Fatalf("helm lint %v: %v\n%s", args, err, out)
		}
	}
}

func TestSchemaRefuses(t *testing.T) {
	tests := []struct {
		set  []string
		want string
	}{
		{[]string{"webhook.failurePolicy=Sometimes"}, "/webhook/failurePolicy': value must be one of 'Ignore', 'Fail'"},
		{[]string{"injector.replicas=two"}, "/injector/replicas': got string, want integer"},
		{[]string{"injector.replica=2"}, "additional properties 'replica' not allowed"},
		{[]string{"webhook.url=https://127.0.0.1:8443/inject"}, "/webhook/caBundle': minLength"},
		{[]string{"webhook.url=http://127.0.0.1:8443/inject", "webhook.caBundle=Q0E="}, "/webhook/url'"},
		{[]string{"tls.mode=vault"}, "/tls/mode': value must be one of 'helm', 'cert-manager', 'secret'"},
		{[]string{"tls.mode=secret", "webhook.caBundle=Q0E="}, "/tls/secretName': minLength"},
		{[]string{"proxy.resources.cpuLimit=lots"}, "/proxy/resources/cpuLimit'"},
		{[]string{"proxy.traceSampleRatio=2"}, "/proxy/traceSampleRatio'"},
		{[]string{"proxy.otlpEndpoint=http://jaeger:4317"}, "/proxy/otlpEndpoint'"},
		// Ports the sidecar refuses at start (exit 2), so that no
		// injected pod would start.
		{[]string{"proxy.otlpEndpoint=jaeger:99999"}, "/proxy/otlpEndpoint'"},
		{[]string{"proxy.otlpEndpoint=jaeger:0"}, "/proxy/otlpEndpoint'"},
		{[]string{"proxy.otlpEndpoint=jaeger:65536"}, "/proxy/otlpEndpoint'"},
		{[]string{"proxy.adminPort=70000"}, "/proxy/adminPort'"},
		{[]string{"proxy.inboundPort=0"}, "/proxy/inboundPort'"},
		// Ports the sidecar, without capabilities, cannot listen on.
		{[]string{"proxy.adminPort=80"}, "proxy.adminPort: 80 is below 1024"},
		{[]string{"proxy.outboundPort=1023"}, "proxy.outboundPort: 1023 is below 1024"},
		{[]string{"proxy.inboundPort=443"}, "proxy.inboundPort: 443 is below 1024"},
		{[]string{"webhook.excludeNamespaces[0]=Kube-System"}, "/webhook/excludeNamespaces/0'"},
		{[]string{"webhook.excludeNamespaces[0]=kube_system"}, "/webhook/excludeNamespaces/0'"},
		{[]string{"injector.shutdownDelaySeconds=-1"}, "/injector/shutdownDelaySeconds'"},
		{[]string{"policies.shop.geo.timeout=2s"}, "/policies/shop/geo': missing property 'service'"},
		// A misspelt key of a policy: the API server would prune it from
		// the ResiliencePolicy with only a warning.
		{[]string{"policies.shop.geo.service=geo", "policies.shop.geo.retires.attempts=3"}, "at '/policies/shop/geo': additional properties 'retires' not allowed"},
		{[]string{"policies.shop.geo.service=geo", "policies.shop.geo.retries.attempt=3"}, "at '/policies/shop/geo/retries': additional properties 'attempt' not allowed"},
		{[]string{"policies.shop.geo.service=geo", "policies.shop.geo.retries.backoff.min=1s"}, "at '/policies/shop/geo/retries/backoff': additional properties 'min' not allowed"},
		{[]string{"policies.shop.geo.service=geo", "policies.shop.geo.circuitBreaker.failureRate.treshold=0.5"}, "at '/policies/shop/geo/circuitBreaker/failureRate': additional properties 'treshold' not allowed"},
		{[]string{"policies.shop.geo.service=geo", "policies.shop.geo.outlierDetection.maxEjectionPercentage=10"}, "at '/policies/shop/geo/outlierDetection': additional properties 'maxEjectionPercentage' not allowed"},
		{[]string{"policies.shop.geo.service=geo", "policies.shop.geo.timeout=2"}, "at '/policies/shop/geo/timeout': got number, want string"},
		{[]string{"policies.shop.geo.service=geo", "policies.shop.geo.circuitBreaker.openTimeout=1 minute"}, "at '/policies/shop/geo/circuitBreaker/openTimeout'"},
		{[]string{"policies.shop.geo.service=geo", "policies.shop.geo.retries.attempts=3", "policies.shop.geo.retries.retryOn[0]=503"}, "at '/policies/shop/geo/retries/retryOn/0': got number, want string"},
	}
	for _, tt := range tests {
		var args []string
		for _, s := range tt.set {
			args = append(args, "--set", s)
		}
		out, err := template(t, args...)
		if err == nil {
			t.Errorf("%v: rendered, want a schema error", tt.set)
			continue
		}
		if !strings.Contains(out, tt.want) {
			t.Errorf("%v: %s\nwant %q", tt.set, out, tt.want)
		}
	}
}

package chart_test

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/injector"
	"github.com/minimesh/minimesh/policy"
)

// valueInConfig is where a chart value lands in the injection config
// (templates/config.yaml); image.repository and image.tag make
// proxy.image when proxy.image is unset.
var valueInConfig = map[string]string{
	"proxy.image":                   "proxy.image",
	"proxy.initImage":               "proxy.initImage",
	"image.pullPolicy":              "proxy.imagePullPolicy",
	"proxy.resources.cpuRequest":    "proxy.cpuRequest",
	"proxy.resources.cpuLimit":      "proxy.cpuLimit",
	"proxy.resources.memoryRequest": "proxy.memoryRequest",
	"proxy.resources.memoryLimit":   "proxy.memoryLimit",
	"proxy.logLevel":                "proxy.logLevel",
	"proxy.outboundPort":            "proxy.outboundPort",
	"proxy.adminPort":               "proxy.adminPort",
	"proxy.inboundPort":             "proxy.inboundPort",
	"proxy.traceSampleRatio":        "traceSampleRatio",
	"proxy.noProxy":                 "noProxy",
	"proxy.otlpEndpoint":            "otlpEndpoint",
	"image.repository":              "",
	"image.tag":                     "",
}

// injectionConfig is the injection config of a render, as the controller
// reads it.
func injectionConfig(t *testing.T, out string) string {
	t.Helper()
	cm := find(docs(t, out), "ConfigMap", "minimesh-injector-config")
	if cm == nil {
		t.Fatal("no injector config rendered")
	}
	return cm["data"].(map[string]any)["config.yaml"].(string)
}

// equivalentConfig is the default render's injection config with the
// values set where the chart would put them: what the controller would
// read had the chart rendered them.
func equivalentConfig(t *testing.T, base string, set map[string]any) []byte {
	t.Helper()
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(base), &cfg); err != nil {
		t.Fatal(err)
	}
	put := func(path string, v any) {
		m := cfg
		keys := strings.Split(path, ".")
		for _, k := range keys[:len(keys)-1] {
			m = m[k].(map[string]any)
		}
		m[keys[len(keys)-1]] = v
	}
	for k, v := range set {
		path, ok := valueInConfig[k]
		if !ok {
			t.Fatalf("%s: where it lands in the config is not known to this test", k)
		}
		if path != "" {
			put(path, v)
		}
	}
	_, repo := set["image.repository"]
	_, tag := set["image.tag"]
	if _, image := set["proxy.image"]; !image && (repo || tag) {
		r, _ := set["image.repository"].(string)
		if r == "" {
			r = "ghcr.io/minimesh/minimesh"
		}
		tg, _ := set["image.tag"].(string)
		if tg == "" {
			tg = "0.1.0"
		}
		put("proxy.image", r+":"+tg)
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// setArgs are helm's flags for the values, each with its type: strings
// as strings (--set would make "2" a number), numbers as numbers, lists
// as JSON.
func setArgs(t *testing.T, set map[string]any) []string {
	t.Helper()
	var args []string
	for k, v := range set {
		switch v := v.(type) {
		case string:
			args = append(args, "--set-string", k+"="+v)
		case int:
			args = append(args, "--set", fmt.Sprintf("%s=%d", k, v))
		default:
			j, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			args = append(args, "--set-json", k+"="+string(j))
		}
	}
	return args
}

// TestChartAgreesWithValidate: for every rule of injector's Validate that
// a chart value can break, helm refuses the value exactly when
// `minimesh controller` would refuse the config it renders (else the
// injector crash-loops behind a release helm calls deployed, and with
// failurePolicy Ignore pods go unmeshed). Accepted values render the
// config the equivalent one loads as.
func TestChartAgreesWithValidate(t *testing.T) {
	out, err := template(t)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	base := injectionConfig(t, out)
	digest := "@sha256:" + strings.Repeat("1", 64)
	tests := []struct {
		name string
		set  map[string]any
		// chartErr and cfgErr: what each refusal says; both empty when
		// both accept.
		chartErr, cfgErr string
		// chartOnly: a form of quantity the chart does not read (the
		// schema's syntax is the documented one) and Validate does. The
		// chart refusing more is safe; this records each such form.
		chartOnly bool
	}{
		// Ports.
		{"outbound is admin", map[string]any{"proxy.outboundPort": 15020}, "proxy.adminPort: 15020 is also proxy.outboundPort", "proxy.adminPort: 15020 is also the outbound port", false},
		{"inbound is outbound", map[string]any{"proxy.inboundPort": 15001}, "proxy.inboundPort: 15001 is also", "proxy.inboundPort: 15001 is also", false},
		{"inbound is admin", map[string]any{"proxy.inboundPort": 15020}, "proxy.inboundPort: 15020 is also", "proxy.inboundPort: 15020 is also", false},
		{"ports swapped", map[string]any{"proxy.outboundPort": 15020, "proxy.adminPort": 15001}, "", "", false},
		{"port 0", map[string]any{"proxy.outboundPort": 0}, "/proxy/outboundPort'", "is not a port", false},
		{"port 65536", map[string]any{"proxy.adminPort": 65536}, "/proxy/adminPort'", "is not a port", false},
		// Below 1024 the sidecar, without capabilities, cannot listen.
		{"admin port 1023", map[string]any{"proxy.adminPort": 1023}, "proxy.adminPort: 1023 is below 1024", "proxy.adminPort: 1023 is below 1024", false},
		{"outbound port 80", map[string]any{"proxy.outboundPort": 80}, "proxy.outboundPort: 80 is below 1024", "proxy.outboundPort: 80 is below 1024", false},
		{"inbound port 1", map[string]any{"proxy.inboundPort": 1}, "proxy.inboundPort: 1 is below 1024", "proxy.inboundPort: 1 is below 1024", false},
		{"inbound port 1024", map[string]any{"proxy.inboundPort": 1024}, "", "", false},
		// The collector: what the sidecar refuses at start (exit 2).
		{"otlp port 99999", map[string]any{"proxy.otlpEndpoint": "jaeger:99999"}, "/proxy/otlpEndpoint'", "otlpEndpoint", false},
		{"otlp port 0", map[string]any{"proxy.otlpEndpoint": "jaeger:0"}, "/proxy/otlpEndpoint'", "otlpEndpoint", false},
		{"otlp port 65536", map[string]any{"proxy.otlpEndpoint": "jaeger:65536"}, "/proxy/otlpEndpoint'", "otlpEndpoint", false},
		{"otlp no port", map[string]any{"proxy.otlpEndpoint": "jaeger"}, "/proxy/otlpEndpoint'", "otlpEndpoint", false},
		{"otlp signed port", map[string]any{"proxy.otlpEndpoint": "jaeger:+4317"}, "/proxy/otlpEndpoint'", "otlpEndpoint", false},
		{"otlp port 65535", map[string]any{"proxy.otlpEndpoint": "jaeger.observability:65535"}, "", "", false},
		{"otlp port 1", map[string]any{"proxy.otlpEndpoint": "10.0.0.1:1"}, "", "", false},
		{"otlp leading zero", map[string]any{"proxy.otlpEndpoint": "jaeger:04317"}, "", "", false},
		{"otlp IPv6", map[string]any{"proxy.otlpEndpoint": "[fd00::1]:4317"}, "", "", false},
		{"otlp IPv6 port 0", map[string]any{"proxy.otlpEndpoint": "[fd00::1]:0"}, "/proxy/otlpEndpoint'", "otlpEndpoint", false},
		// Images.
		{"digest without init image", map[string]any{"proxy.image": "reg/mm" + digest}, "proxy.initImage: must be set: proxy.image reg/mm" + digest + " is pinned by digest", "proxy.initImage: must be set", false},
		{"digest with init image", map[string]any{"proxy.image": "reg/mm" + digest, "proxy.initImage": "reg/mm-init" + digest}, "", "", false},
		// Validate's message depends on which of its image checks speaks
		// first; both name proxy.image.
		{"repository with digest", map[string]any{"image.repository": "reg/mm" + digest}, "/image/repository'", "proxy.image", false},
		{"no repository", map[string]any{"proxy.image": ":v1"}, "/proxy/image'", "proxy.image", false},
		{"registry port", map[string]any{"proxy.image": "registry.example:5000/mm"}, "", "", false},
		// Image references the kubelet can pull: the schema's pattern,
		// then the template's bare image ID and 255-byte repository path.
		{"image leading space", map[string]any{"proxy.image": " reg/mm:v1"}, "/proxy/image'", "contains white space", false},
		{"image trailing space", map[string]any{"proxy.image": "reg/mm:v1 "}, "/proxy/image'", "contains white space", false},
		{"image inner space", map[string]any{"proxy.image": "reg/m m:v1"}, "/proxy/image'", "contains white space", false},
		{"init image space", map[string]any{"proxy.initImage": "reg/mm-init :v1"}, "/proxy/initImage'", "proxy.initImage", false},
		{"upper-case repository", map[string]any{"proxy.image": "Reg.example/MM:v1"}, "/proxy/image'", "repository", false},
		{"upper-case image.repository", map[string]any{"image.repository": "reg.example/Mesh"}, "/image/repository'", "repository", false},
		{"tag of 129", map[string]any{"proxy.image": "reg/mm:" + strings.Repeat("t", 129)}, "/proxy/image'", "tag", false},
		{"tag starting with .", map[string]any{"proxy.image": "reg/mm:.v1"}, "/proxy/image'", "tag", false},
		{"tag starting with -", map[string]any{"proxy.initImage": "reg/mm-init:-v1"}, "/proxy/initImage'", "tag", false},
		{"image.tag starting with .", map[string]any{"image.tag": ".v1"}, "/image/tag'", "tag", false},
		{"empty tag", map[string]any{"proxy.image": "reg/mm:"}, "/proxy/image'", "tag", false},
		{"digest of 63 hex", map[string]any{"proxy.image": "reg/mm@sha256:" + strings.Repeat("1", 63), "proxy.initImage": "reg/mm-init" + digest}, "/proxy/image'", "digest", false},
		{"digest upper-case hex", map[string]any{"proxy.image": "reg/mm@sha256:" + strings.Repeat("A", 64), "proxy.initImage": "reg/mm-init" + digest}, "/proxy/image'", "digest", false},
		{"digest md5", map[string]any{"proxy.image": "reg/mm@md5:" + strings.Repeat("1", 32), "proxy.initImage": "reg/mm-init" + digest}, "/proxy/image'", "digest", false},
		{"sha384 digest with sha256's length", map[string]any{"proxy.image": "reg/mm@sha384:" + strings.Repeat("1", 64), "proxy.initImage": "reg/mm-init" + digest}, "/proxy/image'", "digest", false},
		{"image ID", map[string]any{"proxy.image": strings.Repeat("1a", 32)}, `proxy.image: "` + strings.Repeat("1a", 32) + `": 64 hex digits name an image ID`, "image ID", false},
		{"init image ID", map[string]any{"proxy.initImage": strings.Repeat("1a", 32)}, `proxy.initImage: "` + strings.Repeat("1a", 32) + `": 64 hex digits name an image ID`, "image ID", false},
		{"path of 256", map[string]any{"proxy.image": "reg.example/" + strings.Repeat("a", 256), "proxy.initImage": "reg.example/mm-init:v1"}, "proxy.image: \"reg.example/aaa", "repository path of 256 bytes, more than 255", false},
		{"path of 255", map[string]any{"proxy.image": "reg.example/" + strings.Repeat("a/", 127) + "a:v1", "proxy.initImage": "reg.example/mm-init:v1"}, "", "", false},
		{"path of 256 with library/", map[string]any{"proxy.image": strings.Repeat("a", 248), "proxy.initImage": "reg.example/mm-init:v1"}, "repository path of 256 bytes, more than 255", "repository path of 256 bytes, more than 255", false},
		{"path of 256 after docker.io", map[string]any{"proxy.image": "docker.io/" + strings.Repeat("a", 248), "proxy.initImage": "reg.example/mm-init:v1"}, "repository path of 256 bytes, more than 255", "repository path of 256 bytes, more than 255", false},
		{"path of 256 in image.repository", map[string]any{"image.repository": "reg.example/" + strings.Repeat("a", 256)}, "image.repository: \"reg.example/aaa", "repository path of 256 bytes, more than 255", false},
		{"init path of 256", map[string]any{"proxy.initImage": "localhost/" + strings.Repeat("a", 256)}, "proxy.initImage: \"localhost/aaa", "repository path of 256 bytes, more than 255", false},
		{"default init path of 256", map[string]any{"proxy.image": "reg.example/" + strings.Repeat("a", 251) + ":v1"}, "proxy.initImage: must be set: proxy.image \"reg.example/aaa", "repository path of 256 bytes, more than 255", false},
		{"default init path of 255", map[string]any{"proxy.image": "reg.example/" + strings.Repeat("a", 250) + ":v1"}, "", "", false},
		{"nested path behind a port", map[string]any{"proxy.image": "registry.example:5000/team/sub/mm:v1"}, "", "", false},
		{"IPv6 registry", map[string]any{"proxy.image": "[fd00::1]:5000/mm:v1"}, "", "", false},
		{"tag of 128", map[string]any{"proxy.image": "reg/mm:_" + strings.Repeat("T.-", 42) + "1"}, "", "", false},
		{"sha512 with init image", map[string]any{"proxy.image": "reg/mm:v1@sha512:" + strings.Repeat("ab", 64), "proxy.initImage": "reg/mm-init@sha384:" + strings.Repeat("c", 96)}, "", "", false},
		{"image.tag with digest", map[string]any{"image.tag": "v1" + digest, "proxy.initImage": "reg/mm-init" + digest}, "", "", false},
		{"localhost tag", map[string]any{"proxy.image": "localhost/x:1"}, "", "", false},
		{"host and tag alone", map[string]any{"proxy.image": "localhost:5000"}, "", "", false},
		{"repository and tag", map[string]any{"image.repository": "reg/mesh", "image.tag": "v2"}, "", "", false},
		{"pull policy", map[string]any{"image.pullPolicy": "Sometimes"}, "/image/pullPolicy'", "proxy.imagePullPolicy", false},
		{"log level", map[string]any{"proxy.logLevel": "verbose"}, "/proxy/logLevel'", "proxy.logLevel", false},
		// CPU: request within limit, at most 8 cores.
		{"cpu request over limit", map[string]any{"proxy.resources.cpuRequest": "2"}, "proxy.resources.cpuRequest: 2 is more than proxy.resources.cpuLimit 1", "proxy.cpuRequest: 2 is more than proxy.cpuLimit 1", false},
		{"cpu 500m under 1", map[string]any{"proxy.resources.cpuRequest": "500m"}, "", "", false},
		{"cpu 1 is 1000m", map[string]any{"proxy.resources.cpuRequest": "1000m"}, "", "", false},
		{"cpu 1001m over 1", map[string]any{"proxy.resources.cpuRequest": "1001m"}, "is more than proxy.resources.cpuLimit", "is more than proxy.cpuLimit", false},
		{"cpu decimal over limit", map[string]any{"proxy.resources.cpuRequest": "0.6", "proxy.resources.cpuLimit": "500m"}, "is more than", "is more than", false},
		{"cpu 8 cores", map[string]any{"proxy.resources.cpuLimit": "8", "proxy.resources.cpuRequest": "8000m"}, "", "", false},
		{"cpu 8001m", map[string]any{"proxy.resources.cpuLimit": "8001m"}, `proxy.resources.cpuLimit: "8001m": more than 8`, `proxy.cpuLimit: "8001m": more than 8`, false},
		{"cpu 8 and a nano", map[string]any{"proxy.resources.cpuLimit": "8.000000001"}, "more than 8,", "more than 8,", false},
		{"cpu rounded up to 8", map[string]any{"proxy.resources.cpuLimit": "7.9999999999"}, "", "", false},
		{"cpu 1k", map[string]any{"proxy.resources.cpuLimit": "1k"}, "more than 8,", "more than 8,", false},
		{"cpu no limit", map[string]any{"proxy.resources.cpuLimit": "", "proxy.resources.cpuRequest": "8"}, "", "", false},
		{"cpu no limit, request over 8", map[string]any{"proxy.resources.cpuLimit": "", "proxy.resources.cpuRequest": "9"}, "more than 8,", "more than 8,", false},
		{"cpu zero", map[string]any{"proxy.resources.cpuRequest": "0"}, "must be more than zero", "must be more than zero", false},
		{"cpu 0m", map[string]any{"proxy.resources.cpuRequest": "0.000m"}, "must be more than zero", "must be more than zero", false},
		{"cpu rounded up to a nano", map[string]any{"proxy.resources.cpuRequest": "0.0000000001"}, "", "", false},
		{"cpu not a quantity", map[string]any{"proxy.resources.cpuLimit": "lots"}, "/proxy/resources/cpuLimit'", "not a quantity", false},
		{"cpu negative", map[string]any{"proxy.resources.cpuRequest": "-1"}, "/proxy/resources/cpuRequest'", "must be more than zero", false},
		{"cpu huge", map[string]any{"proxy.resources.cpuLimit": strings.Repeat("9", 40) + "Ti"}, "more than 8,", "more than 8,", false},
		// Memory: request within limit, at most 8Gi.
		{"memory 128Mi under 1Gi", map[string]any{"proxy.resources.memoryRequest": "128Mi", "proxy.resources.memoryLimit": "1Gi"}, "", "", false},
		{"memory 1Gi over 128Mi", map[string]any{"proxy.resources.memoryRequest": "1Gi"}, "proxy.resources.memoryRequest: 1Gi is more than proxy.resources.memoryLimit 128Mi", "proxy.memoryRequest: 1Gi is more than proxy.memoryLimit 128Mi", false},
		{"memory 128Mi in bytes", map[string]any{"proxy.resources.memoryRequest": "134217728"}, "", "", false},
		{"memory a byte over", map[string]any{"proxy.resources.memoryRequest": "134217729"}, "is more than", "is more than", false},
		{"memory 8Gi", map[string]any{"proxy.resources.memoryLimit": "8Gi"}, "", "", false},
		{"memory 8192Mi", map[string]any{"proxy.resources.memoryLimit": "8192Mi"}, "", "", false},
		{"memory 8Gi in G", map[string]any{"proxy.resources.memoryLimit": "8.589934592G"}, "", "", false},
		{"memory 8Gi in Ti", map[string]any{"proxy.resources.memoryLimit": "0.0078125Ti"}, "", "", false},
		{"memory 8Gi and a byte", map[string]any{"proxy.resources.memoryLimit": "8589934593"}, `"8589934593": more than 8Gi`, `"8589934593": more than 8Gi`, false},
		{"memory 8Gi and a millibyte", map[string]any{"proxy.resources.memoryLimit": "8589934592001m"}, "more than 8Gi", "more than 8Gi", false},
		{"memory 8Gi rounded up", map[string]any{"proxy.resources.memoryLimit": "8589934591.9999999999"}, "", "", false},
		{"memory 100Gi", map[string]any{"proxy.resources.memoryLimit": "100Gi"}, "more than 8Gi", "more than 8Gi", false},
		{"memory 1Ti", map[string]any{"proxy.resources.memoryLimit": "1Ti"}, "more than 8Gi", "more than 8Gi", false},
		{"memory half a Ki", map[string]any{"proxy.resources.memoryLimit": "0.5Ki", "proxy.resources.memoryRequest": "512"}, "", "", false},
		{"memory over half a Ki", map[string]any{"proxy.resources.memoryLimit": "0.5Ki", "proxy.resources.memoryRequest": "513"}, "is more than", "is more than", false},
		{"memory a millibyte", map[string]any{"proxy.resources.memoryRequest": "1m"}, "", "", false},
		// Tracing, NO_PROXY.
		{"sample ratio", map[string]any{"proxy.traceSampleRatio": 2.5}, "/proxy/traceSampleRatio'", "traceSampleRatio", false},
		{"no-proxy space", map[string]any{"proxy.noProxy": []string{"a b"}}, "/proxy/noProxy/0'", "noProxy[0]", false},
		{"no-proxy comma", map[string]any{"proxy.noProxy": []string{"a,b"}}, "/proxy/noProxy/0'", "noProxy[0]", false},
		{"no-proxy empty", map[string]any{"proxy.noProxy": []string{""}}, "/proxy/noProxy/0'", "noProxy[0]", false},
		{"no-proxy hosts", map[string]any{"proxy.noProxy": []string{".example.com", "10.0.0.0/8"}}, "", "", false},
		// Forms only Validate reads.
		{"micro", map[string]any{"proxy.resources.cpuRequest": "500u"}, "/proxy/resources/cpuRequest'", "", true},
		{"exponent", map[string]any{"proxy.resources.cpuRequest": "1e-1"}, "/proxy/resources/cpuRequest'", "", true},
		{"leading point", map[string]any{"proxy.resources.cpuRequest": ".5"}, "/proxy/resources/cpuRequest'", "", true},
		{"no memory limit", map[string]any{"proxy.resources.memoryLimit": ""}, "/proxy/resources/memoryLimit'", "", true},
		{"otlp without host", map[string]any{"proxy.otlpEndpoint": ":4317"}, "/proxy/otlpEndpoint'", "", true},
		{"binary past nanos", map[string]any{"proxy.resources.memoryLimit": "1.0000000001Ki", "proxy.resources.memoryRequest": "1Ki"}, "more than 9 decimal places before a binary suffix", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, helmErr := template(t, setArgs(t, tt.set)...)
			cfg, cfgErr := injector.ParseConfig(equivalentConfig(t, base, tt.set))
			switch {
			case tt.chartOnly:
				if helmErr == nil || cfgErr != nil {
					t.Fatalf("helm: %v; Validate: %v; want the chart alone to refuse\n%s", helmErr, cfgErr, out)
				}
			case (helmErr == nil) != (cfgErr == nil):
				t.Fatalf("helm and Validate disagree: helm: %v\n%s\nValidate: %v", helmErr, out, cfgErr)
			case helmErr == nil:
				if tt.chartErr != "" {
					t.Fatalf("both accept; want a refusal %q", tt.chartErr)
				}
				got, err := injector.ParseConfig([]byte(injectionConfig(t, out)))
				if err != nil || !reflect.DeepEqual(got, cfg) {
					t.Fatalf("rendered config %+v, %v; want %+v", got, err, cfg)
				}
				return
			default:
				if tt.chartErr == "" {
					t.Fatalf("both refuse; want both to accept\nhelm: %s\nValidate: %v", out, cfgErr)
				}
				if !strings.Contains(cfgErr.Error(), tt.cfgErr) {
					t.Errorf("Validate: %v; want %q", cfgErr, tt.cfgErr)
				}
			}
			if !strings.Contains(out, tt.chartErr) {
				t.Errorf("helm: %s\nwant %q", out, tt.chartErr)
			}
		})
	}
}

// TestValidityDaysBound: past 106751 days sprig's genCA overflows
// days*24h into certificates that expired centuries ago, which the
// injector would serve; the schema stops at 100 years, whose certificates
// are valid.
func TestValidityDaysBound(t *testing.T) {
	out, err := template(t, "--set", "tls.validityDays=36500")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	secret := find(docs(t, out), "Secret", "minimesh-injector-tls")
	if secret == nil {
		t.Fatal("no TLS Secret rendered")
	}
	// The certificates are made by helm at render time with the clock's
	// now; 99 years from this test's now leaves that race a year.
	floor := time.Now().AddDate(99, 0, 0)
	for _, key := range []string{"ca.crt", "tls.crt"} {
		der, err := base64.StdEncoding.DecodeString(secret["data"].(map[string]any)[key].(string))
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(der)
		if block == nil {
			t.Fatalf("%s: no PEM block", key)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if cert.NotAfter.Before(floor) {
			t.Errorf("%s: notAfter %v; want 100 years from now", key, cert.NotAfter)
		}
	}
	for _, days := range []string{"36501", "106752", "1000000"} {
		out, err := template(t, "--set", "tls.validityDays="+days)
		if err == nil || !strings.Contains(out, "/tls/validityDays': maximum") {
			t.Errorf("validityDays %s: %v\n%s\nwant a schema refusal", days, err, out)
		}
	}
}

// TestPolicyNames: the names under policies are rendered as strings
// whatever YAML would read them as (on is a bool, 2024 a number), and a
// name Kubernetes would refuse is refused at render, naming it.
func TestPolicyNames(t *testing.T) {
	out, err := template(t, "--set-json", `policies={"2024":{"on":{"service":"a"}},"shop":{"a.b":{"service":"b"},"null":{"service":"c"}}}`)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	objs := docs(t, out)
	want := map[string][]string{"2024": {"on"}, "shop": {"a.b", "null"}}
	got := map[string][]string{}
	for _, o := range objs {
		md := o["metadata"].(map[string]any)
		ns, _ := md["namespace"].(string)
		switch {
		case o["kind"] == "ResiliencePolicy":
			name, ok := md["name"].(string)
			if !ok {
				t.Fatalf("ResiliencePolicy name %#v (%T) in namespace %#v", md["name"], md["name"], md["namespace"])
			}
			got[ns] = append(got[ns], name)
		case o["kind"] == "ConfigMap" && md["name"] == "minimesh-policies":
			var keys []string
			for key, data := range o["data"].(map[string]any) {
				keys = append(keys, key)
				ps, err := policy.Decode(ns+"/"+key, []byte(data.(string)))
				if err != nil || len(ps) != 1 {
					t.Fatalf("%s/%s: %d policies, %v", ns, key, len(ps), err)
				}
			}
			if len(keys) != len(want[ns]) {
				t.Errorf("namespace %q: ConfigMap keys %v; want one per policy of %v", ns, keys, want[ns])
			}
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ResiliencePolicies %v; want %v", got, want)
	}
	for _, tt := range []struct{ json, want string }{
		{`{"Shop":{"a":{"service":"a"}}}`, "at '/policies': additional properties 'Shop' not allowed"},
		{`{"-shop":{"a":{"service":"a"}}}`, "at '/policies': additional properties '-shop' not allowed"},
		{`{"` + strings.Repeat("a", 64) + `":{"a":{"service":"a"}}}`, "additional properties '" + strings.Repeat("a", 64) + "' not allowed"},
		{`{"shop":{"A_b":{"service":"a"}}}`, "at '/policies/shop': additional properties 'A_b' not allowed"},
		{`{"shop":{"a..b":{"service":"a"}}}`, "at '/policies/shop': additional properties 'a..b' not allowed"},
		{`{"shop":{"` + strings.Repeat("a", 249) + `":{"service":"a"}}}`, "maxLength: got 249, want 248"},
	} {
		out, err := template(t, "--set-json", "policies="+tt.json)
		if err == nil || !strings.Contains(out, tt.want) {
			t.Errorf("policies=%.80s: %v\n%s\nwant %q", tt.json, err, out, tt.want)
		}
	}
}

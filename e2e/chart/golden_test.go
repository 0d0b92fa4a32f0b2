package chart_test

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/injector"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/wellknown"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// renders are the chart's options, one golden file each.
var renders = map[string][]string{
	"default":      nil,
	"url":          {"--set", "webhook.url=https://127.0.0.1:8443/inject", "--set", "webhook.caBundle=Q0E=", "--set", "dashboards.enabled=false"},
	"cert-manager": {"--set", "tls.mode=cert-manager", "--set", "dashboards.enabled=false"},
	"secret":       {"--set", "tls.mode=secret", "--set", "tls.secretName=my-tls", "--set", "webhook.caBundle=Q0E=", "--set", "dashboards.enabled=false"},
	"fail-single":  {"--set", "webhook.failurePolicy=Fail", "--set", "injector.replicas=1", "--set", "helmTest.enabled=false", "--set", "dashboards.enabled=false"},
	"monitoring":   {"--set", "podMonitor.enabled=true", "--set", "prometheusRule.enabled=true", "--set", "podMonitor.labels.release=kube-prometheus", "--set", "dashboards.enabled=false"},
	"policies":     {"-f", "testdata/policies-values.yaml", "--set", "dashboards.enabled=false"},
	"digests": {"--set", "proxy.image=registry.example/minimesh@sha256:" + strings.Repeat("1", 64),
		"--set", "proxy.initImage=registry.example/minimesh-init@sha256:" + strings.Repeat("2", 64), "--set", "dashboards.enabled=false"},
}

func TestGolden(t *testing.T) {
	for name, args := range renders {
		t.Run(name, func(t *testing.T) {
			out, err := template(t, args...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, out)
			}
			got := mask(out)
			path := filepath.Join("testdata", name+".golden.yaml")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (go test ./e2e/chart -update)", err)
			}
			if got != string(want) {
				t.Errorf("%s differs (go test ./e2e/chart -run TestGolden -update rewrites it)", path)
			}
		})
	}
}

// docs splits a render into objects.
func docs(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for _, d := range strings.Split(out, "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			t.Fatalf("a rendered document does not parse: %v\n%s", err, d)
		}
		if m != nil {
			objs = append(objs, m)
		}
	}
	return objs
}

func find(objs []map[string]any, kind, name string) map[string]any {
	for _, o := range objs {
		if o["kind"] == kind && o["metadata"].(map[string]any)["name"] == name {
			return o
		}
	}
	return nil
}

// TestRenderedFilesLoad reads what the chart renders for the programs the
// way they read it: the injection config with the controller's parser, the
// policies with the sidecar's, the alert rules as the tested file.
func TestRenderedFilesLoad(t *testing.T) {
	out, err := template(t, "-f", "testdata/policies-values.yaml", "--set", "prometheusRule.enabled=true")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	objs := docs(t, out)
	cm := find(objs, "ConfigMap", "minimesh-injector-config")
	if cm == nil {
		t.Fatal("no injector config")
	}
	cfg, err := injector.ParseConfig([]byte(cm["data"].(map[string]any)["config.yaml"].(string)))
	if err != nil {
		t.Fatalf("the rendered injection config does not load: %v", err)
	}
	if cfg.OTLPEndpoint != "jaeger-collector.observability:4317" || cfg.TraceSampleRatio == nil || *cfg.TraceSampleRatio != 0.1 ||
		cfg.Proxy.Image != "ghcr.io/minimesh/minimesh:0.1.0" || cfg.Proxy.CPULimit != "1" ||
		cfg.Proxy.InitImageRef() != "ghcr.io/minimesh/minimesh-init:0.1.0" {
		t.Fatalf("rendered config %+v", cfg)
	}
	// Images pinned by digest: the init image is named, since a digest
	// names one image only.
	for _, c := range []struct {
		sets []string
		want string
	}{
		{[]string{"proxy.image=reg/mm@sha256:" + strings.Repeat("1", 64), "proxy.initImage=reg/mm-init@sha256:" + strings.Repeat("2", 64)}, "reg/mm-init@sha256:" + strings.Repeat("2", 64)},
		{[]string{"image.repository=reg/mesh", "image.tag=v2"}, "reg/mesh-init:v2"},
	} {
		args := []string{}
		for _, s := range c.sets {
			args = append(args, "--set", s)
		}
		out, err := template(t, args...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		cm := find(docs(t, out), "ConfigMap", "minimesh-injector-config")
		cfg, err := injector.ParseConfig([]byte(cm["data"].(map[string]any)["config.yaml"].(string)))
		if err != nil || cfg.Proxy.InitImageRef() != c.want {
			t.Errorf("--set %q: init image %q, %v; want %s", c.sets, cfg.Proxy.InitImageRef(), err, c.want)
		}
	}
	// No CPU limit for the sidecars (cpuLimit empty): the injector then
	// gives each its request's Ps, not the node's every core.
	out, err = template(t, "--set", "proxy.resources.cpuLimit=")
	if err != nil {
		t.Fatalf("cpuLimit empty: %v\n%s", err, out)
	}
	cm = find(docs(t, out), "ConfigMap", "minimesh-injector-config")
	cfg, err = injector.ParseConfig([]byte(cm["data"].(map[string]any)["config.yaml"].(string)))
	if err != nil || cfg.Proxy.CPULimit != "" {
		t.Fatalf("cpuLimit empty: rendered config %+v, %v", cfg.Proxy, err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Annotations: map[string]string{wellknown.AnnotationInject: wellknown.InjectEnabled}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	res, err := injector.Inject(injector.Input{Pod: pod, Namespace: "shop"}, &cfg)
	if err != nil || !res.Injected {
		t.Fatalf("cpuLimit empty: inject: %v", err)
	}
	sidecars := 0
	for _, c := range res.Pod.Spec.InitContainers {
		if c.Name != wellknown.ProxyContainerName {
			continue
		}
		sidecars++
		procs := ""
		for _, e := range c.Env {
			if e.Name == "GOMAXPROCS" {
				procs = e.Value
			}
		}
		if _, limited := c.Resources.Limits[corev1.ResourceCPU]; limited || procs != "1" {
			t.Fatalf("cpuLimit empty: sidecar limits %v, GOMAXPROCS %q; want no CPU limit and 1", c.Resources.Limits, procs)
		}
	}
	if sidecars != 1 {
		t.Fatalf("cpuLimit empty: %d sidecars injected, want 1", sidecars)
	}
	n := 0
	for _, o := range objs {
		md := o["metadata"].(map[string]any)
		if o["kind"] != "ConfigMap" || md["name"] != "minimesh-policies" {
			continue
		}
		for key, data := range o["data"].(map[string]any) {
			ps, err := policy.Decode(md["namespace"].(string)+"/"+key, []byte(data.(string)))
			if err != nil {
				t.Fatalf("rendered policy does not decode: %v", err)
			}
			n += len(ps)
		}
	}
	if n != 3 {
		t.Fatalf("%d policies rendered, want 3", n)
	}
	rule := find(objs, "PrometheusRule", "minimesh")
	alerts, err := os.ReadFile(filepath.Join(chartDir, "alerts", "minimesh-alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := yaml.Unmarshal(alerts, &want); err != nil {
		t.Fatal(err)
	}
	if rule == nil || !reflect.DeepEqual(rule["spec"], want) {
		t.Fatal("the PrometheusRule's spec is not the tested alert file")
	}
}

// TestHelmTLSOnePair: the Secret's CA is the webhook's caBundle, so that
// the API server trusts the certificate the injector serves.
func TestHelmTLSOnePair(t *testing.T) {
	out, err := template(t)
	if err != nil {
		t.Fatal(err)
	}
	objs := docs(t, out)
	secret := find(objs, "Secret", "minimesh-injector-tls")
	mwc := find(objs, "MutatingWebhookConfiguration", "minimesh")
	if secret == nil || mwc == nil {
		t.Fatal("no TLS Secret or webhook configuration")
	}
	ca := secret["data"].(map[string]any)["ca.crt"]
	for _, w := range mwc["webhooks"].([]any) {
		if got := w.(map[string]any)["clientConfig"].(map[string]any)["caBundle"]; got != ca {
			t.Fatal("a webhook's caBundle is not the Secret's CA")
		}
	}
}

package chart_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	yamlv2 "go.yaml.in/yaml/v2"
	"sigs.k8s.io/yaml"
)

// TestServiceLabelRelabeling runs the chart's PodMonitor relabelings and
// the scrape job of docs/dashboards.md through Prometheus's own relabeling
// code, the version the tests' Prometheus is built from, and checks that
// both give metrics the `service` the injector gives spans and the access
// log: the service-name annotation, else app.kubernetes.io/name, else app.
func TestServiceLabelRelabeling(t *testing.T) {
	out, err := template(t, renders["monitoring"]...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	pm := find(docs(t, out), "PodMonitor", "minimesh-proxy")
	if pm == nil {
		t.Fatal("no PodMonitor minimesh-proxy in the monitoring render")
	}
	eps := pm["spec"].(map[string]any)["podMetricsEndpoints"].([]any)
	if len(eps) != 1 {
		t.Fatalf("PodMonitor endpoints: %v, want one", eps)
	}
	rules := map[string][]*relabel.Config{
		"chart PodMonitor":       podMonitorRelabelings(t, eps[0].(map[string]any)["relabelings"]),
		"docs/dashboards.md job": documentedRelabelConfigs(t),
	}

	const (
		ann  = "__meta_kubernetes_pod_annotation_minimesh_io_service_name"
		name = "__meta_kubernetes_pod_label_app_kubernetes_io_name"
		app  = "__meta_kubernetes_pod_label_app"
	)
	cases := []struct {
		name string
		meta map[string]string
		want string // "" is no service label at all
	}{
		{"annotation over app", map[string]string{ann: "checkout", app: "frontend"}, "checkout"},
		{"annotation over both labels", map[string]string{ann: "checkout", name: "shop", app: "frontend"}, "checkout"},
		{"app.kubernetes.io/name over app", map[string]string{name: "shop", app: "frontend"}, "shop"},
		{"app alone", map[string]string{app: "frontend"}, "frontend"},
		{"app.kubernetes.io/name alone", map[string]string{name: "shop"}, "shop"},
		{"empty labels are skipped", map[string]string{ann: "", name: "", app: "frontend"}, "frontend"},
		{"dotted values whole", map[string]string{name: "shop.v2_a-b"}, "shop.v2_a-b"},
		{"none of them", map[string]string{"__meta_kubernetes_pod_label_tier": "web"}, ""},
	}
	for source, cfgs := range rules {
		for _, c := range cases {
			t.Run(source+"/"+c.name, func(t *testing.T) {
				in := map[string]string{
					"__address__":                                 "10.0.0.7:15020",
					"__meta_kubernetes_namespace":                 "shop",
					"__meta_kubernetes_pod_name":                  "web-1",
					"__meta_kubernetes_pod_container_name":        "minimesh-proxy",
					"__meta_kubernetes_pod_container_port_number": "15020",
					"__meta_kubernetes_pod_container_port_name":   "minimesh-admin",
				}
				for k, v := range c.meta {
					in[k] = v
				}
				lb := labels.NewBuilder(labels.FromMap(in))
				if !relabel.ProcessBuilder(lb, cfgs...) {
					t.Fatalf("the sidecar's admin port was dropped: %v", in)
				}
				got := lb.Labels()
				if s := got.Get("service"); s != c.want || got.Has("service") != (c.want != "") {
					t.Errorf("service %q (present %v), want %q; target labels %v", s, got.Has("service"), c.want, got)
				}
				if got.Get("namespace") != "shop" || got.Get("pod") != "web-1" {
					t.Errorf("namespace/pod labels lost: %v", got)
				}
			})
		}
	}
}

// podMonitorRelabelings turns a PodMonitor's relabelings into Prometheus
// relabel configs, the field renames the Prometheus operator makes.
func podMonitorRelabelings(t *testing.T, v any) []*relabel.Config {
	t.Helper()
	rename := map[string]string{"sourceLabels": "source_labels", "targetLabel": "target_label"}
	var out []map[string]any
	for _, r := range v.([]any) {
		m := map[string]any{}
		for k, x := range r.(map[string]any) {
			if n, ok := rename[k]; ok {
				k = n
			}
			m[k] = x
		}
		out = append(out, m)
	}
	return relabelConfigs(t, "the PodMonitor's relabelings", out)
}

// documentedRelabelConfigs are the relabel_configs of the minimesh-proxy
// job in docs/dashboards.md, read from the page as a user copies them.
func documentedRelabelConfigs(t *testing.T) []*relabel.Config {
	t.Helper()
	doc, err := os.ReadFile("../../docs/dashboards.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(- job_name: minimesh-proxy\n.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/dashboards.md: no yaml block with the minimesh-proxy job")
	}
	var jobs []struct {
		Relabel []map[string]any `json:"relabel_configs"`
	}
	if err := yaml.Unmarshal(m[1], &jobs); err != nil || len(jobs) != 1 {
		t.Fatalf("docs/dashboards.md: the minimesh-proxy job: %v (%d jobs)", err, len(jobs))
	}
	return relabelConfigs(t, "docs/dashboards.md's relabel_configs", jobs[0].Relabel)
}

// relabelConfigs loads rules as Prometheus loads its configuration file:
// its YAML defaults (separator ";", regex (.*), replacement $1, action
// replace) and its validation.
func relabelConfigs(t *testing.T, what string, rules []map[string]any) []*relabel.Config {
	t.Helper()
	b, err := yamlv2.Marshal(rules)
	if err != nil {
		t.Fatal(err)
	}
	var cfgs []*relabel.Config
	if err := yamlv2.UnmarshalStrict(b, &cfgs); err != nil {
		t.Fatalf("%s do not load as Prometheus's: %v\n%s", what, err, b)
	}
	for _, c := range cfgs {
		if err := c.Validate(model.UTF8Validation); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, b)
		}
	}
	if len(cfgs) == 0 || !strings.Contains(string(b), "service") {
		t.Fatalf("%s set no service label:\n%s", what, b)
	}
	return cfgs
}

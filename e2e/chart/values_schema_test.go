package chart_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/injector"
)

// TestPolicySchemaIsTheCRDs: the values schema's policy spec has the
// keys of the ResiliencePolicy CRD's spec at every level, each with the
// CRD's type and required keys, and refuses any other key. A key the CRD
// lacks would be pruned by the API server with only a warning (a
// misspelt retries: no retries, helm saying deployed); a key only the CRD
// has would be refused by the chart.
func TestPolicySchemaIsTheCRDs(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(chartDir, "crds", "resiliencepolicies.minimesh.io.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var crd struct {
		Spec struct {
			Versions []struct {
				Schema struct {
					OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &crd); err != nil || len(crd.Spec.Versions) != 1 {
		t.Fatalf("CRD: %v, %d versions, want 1", err, len(crd.Spec.Versions))
	}
	crdSpec := crd.Spec.Versions[0].Schema.OpenAPIV3Schema["properties"].(map[string]any)["spec"].(map[string]any)

	data, err = os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := json.Unmarshal(data, &values); err != nil {
		t.Fatal(err)
	}
	defs := values["definitions"].(map[string]any)
	resolve := func(n map[string]any) map[string]any {
		if ref, ok := n["$ref"].(string); ok {
			name, found := strings.CutPrefix(ref, "#/definitions/")
			if !found || defs[name] == nil {
				t.Fatalf("$ref %q: not a definition of the schema", ref)
			}
			return defs[name].(map[string]any)
		}
		return n
	}
	// policies → namespace → name → spec.
	node := values["properties"].(map[string]any)["policies"].(map[string]any)
	for range 2 {
		pp := node["patternProperties"].(map[string]any)
		if len(pp) != 1 {
			t.Fatalf("policies: %d patterns, want 1", len(pp))
		}
		for _, v := range pp {
			node = resolve(v.(map[string]any))
		}
	}

	sorted := func(v any) []string {
		s := strs(v)
		sort.Strings(s)
		return s
	}
	var walk func(path string, c, v map[string]any)
	walk = func(path string, c, v map[string]any) {
		v = resolve(v)
		if c["type"] != v["type"] {
			t.Errorf("%s: type %v in values.schema.json, %v in the CRD", path, v["type"], c["type"])
			return
		}
		if got, want := sorted(v["required"]), sorted(c["required"]); !slices.Equal(got, want) {
			t.Errorf("%s: required %v in values.schema.json, %v in the CRD", path, got, want)
		}
		switch c["type"] {
		case "array":
			walk(path+"[]", c["items"].(map[string]any), v["items"].(map[string]any))
		case "object":
			if v["additionalProperties"] != false {
				t.Errorf("%s: values.schema.json lets other keys through (additionalProperties: %v)", path, v["additionalProperties"])
			}
			cp, _ := c["properties"].(map[string]any)
			vp, _ := v["properties"].(map[string]any)
			for k := range cp {
				if _, ok := vp[k]; !ok {
					t.Errorf("%s.%s: in the CRD, not in values.schema.json", path, k)
				}
			}
			for k := range vp {
				if _, ok := cp[k]; !ok {
					t.Errorf("%s.%s: in values.schema.json, not in the CRD", path, k)
				}
			}
			for k := range cp {
				if _, ok := vp[k]; ok {
					walk(path+"."+k, cp[k].(map[string]any), vp[k].(map[string]any))
				}
			}
		}
	}
	walk("spec", crdSpec, node)
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

// TestExcludeNamespaces: the namespaces the webhook never calls the
// injector for are webhook.excludeNamespaces and the release's, and the
// injector ignores the same list; null (helm's way to drop a default)
// is an empty list, not a render failure that names no value.
func TestExcludeNamespaces(t *testing.T) {
	for _, tt := range []struct {
		name    string
		args    []string
		webhook []string
		config  []string
	}{
		{"default", nil, []string{"kube-system", "kube-node-lease", "minimesh"}, []string{"kube-system", "kube-node-lease"}},
		{"null", []string{"--set-json", "webhook.excludeNamespaces=null"}, []string{"minimesh"}, nil},
		{"empty", []string{"--set-json", "webhook.excludeNamespaces=[]"}, []string{"minimesh"}, nil},
		{"own", []string{"--set-json", `webhook.excludeNamespaces=["team-a","minimesh"]`}, []string{"team-a", "minimesh"}, []string{"team-a", "minimesh"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := template(t, tt.args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			objs := docs(t, out)
			mwc := find(objs, "MutatingWebhookConfiguration", "minimesh")
			if mwc == nil {
				t.Fatal("no webhook configuration")
			}
			for _, w := range mwc["webhooks"].([]any) {
				var got []string
				for _, e := range asSlice(w.(map[string]any)["namespaceSelector"].(map[string]any)["matchExpressions"]) {
					e := e.(map[string]any)
					if e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn" {
						got = strs(e["values"])
					}
				}
				if !reflect.DeepEqual(got, tt.webhook) {
					t.Errorf("webhook %v: excluded %v, want %v", w.(map[string]any)["name"], got, tt.webhook)
				}
			}
			cfg, err := injector.ParseConfig([]byte(injectionConfig(t, out)))
			if err != nil {
				t.Fatalf("the rendered injection config does not load: %v", err)
			}
			if len(cfg.IgnoredNamespaces) != 0 || len(tt.config) != 0 {
				if !reflect.DeepEqual(cfg.IgnoredNamespaces, tt.config) {
					t.Errorf("injector ignores %v, want %v", cfg.IgnoredNamespaces, tt.config)
				}
			}
		})
	}
}

func strs(v any) []string {
	var s []string
	for _, x := range asSlice(v) {
		s = append(s, x.(string))
	}
	return s
}

package linkerd

import (
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/policy"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.yaml")

func TestGolden(t *testing.T) {
	data, err := os.ReadFile("testdata/policies.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pols, err := policy.Decode("testdata/policies.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Export(pols)
	if err != nil {
		t.Fatal(err)
	}
	const golden = "testdata/linkerd.golden.yaml"
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("%s differs (go test ./policy/linkerd -update):\n%s", golden, got)
	}
	// Every document is YAML a kubectl would read.
	for _, doc := range strings.Split(string(got), "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("document does not parse: %v\n%s", err, doc)
		}
	}
}

func TestServiceRef(t *testing.T) {
	tests := []struct {
		in, name, ns string
		port         int
		ok           bool
	}{
		{"geo", "geo", "shop", 0, true},
		{"geo:8000", "geo", "shop", 8000, true},
		{"geo.maps", "geo", "maps", 0, true},
		{"geo.maps.svc", "geo", "maps", 0, true},
		{"geo.maps.svc.cluster.local:80", "geo", "maps", 80, true},
		{"api.maps.example.com", "", "", 0, false},
	}
	for _, tt := range tests {
		name, ns, port, ok := serviceRef(tt.in, "shop")
		if name != tt.name || ns != tt.ns || port != tt.port || ok != tt.ok {
			t.Errorf("serviceRef(%q) = %q %q %d %v", tt.in, name, ns, port, ok)
		}
	}
}

func TestRetryCodes(t *testing.T) {
	parse := func(items ...string) policy.Conditions {
		var c policy.Conditions
		for _, s := range items {
			cl, code, err := policy.ParseCondition(s)
			if err != nil {
				t.Fatal(err)
			}
			c.Add(cl, code)
		}
		return c
	}
	for _, tt := range []struct {
		in   []string
		want string
	}{
		{[]string{"5xx", "503", "429"}, "5xx,429"},
		{[]string{"gateway-error", "503", "500"}, "gateway-error,500"},
		{[]string{"502", "504"}, "502,504"},
		{[]string{"connect-failure"}, ""},
	} {
		if got, _ := retryCodes(parse(tt.in...)); got != tt.want {
			t.Errorf("retryCodes(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		2 * time.Second: "2s", 90 * time.Second: "90s", time.Minute: "1m", 500 * time.Millisecond: "500ms", 2 * time.Hour: "2h",
	} {
		if got := duration(d); got != want {
			t.Errorf("duration(%s) = %q, want %q", d, got, want)
		}
	}
}

// TestFailureAccrual: the Service's failure accrual is outlierDetection's,
// and absent when ejection is off (Linkerd accrues no failures unless a
// Service asks for it).
func TestFailureAccrual(t *testing.T) {
	decode := func(spec string) *policy.ResiliencePolicy {
		ps, err := policy.Decode("p.yaml", []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: p}\nspec: "+spec+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		return ps[0]
	}
	annotations := func(docs []object) map[string]any {
		for _, d := range docs {
			if d["kind"] == "Service" {
				return d["metadata"].(object)["annotations"].(object)
			}
		}
		return nil
	}
	docs, _, err := export(decode("{service: geo, circuitBreaker: {openTimeout: 10m}}"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{annAccrual: "consecutive", annMaxFailures: "5", annMinPenalty: "30s", annMaxPenalty: "5m"}
	if got := annotations(docs); len(got) != len(want) || got[annMaxFailures] != want[annMaxFailures] || got[annMinPenalty] != want[annMinPenalty] || got[annMaxPenalty] != want[annMaxPenalty] || got[annAccrual] != want[annAccrual] {
		t.Errorf("defaults: %v, want %v", got, want)
	}
	docs, notes, err := export(decode("{service: geo, outlierDetection: {consecutiveFailures: 0}}"))
	if err != nil {
		t.Fatal(err)
	}
	if got := annotations(docs); got != nil {
		t.Errorf("ejection off: annotations %v", got)
	}
	for _, n := range notes {
		if strings.HasPrefix(n, "outlierDetection") {
			t.Errorf("ejection off, yet a note on it: %s", n)
		}
	}
}

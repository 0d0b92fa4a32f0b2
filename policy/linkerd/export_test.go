package linkerd

import (
	"flag"
	"maps"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/minimesh/minimesh/policy"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.yaml")

// TestGolden exports each testdata/*.yaml fixture and compares the
// result with its golden file (go test ./policy/linkerd -update rewrites
// them; read the diff). policies.yaml is also applied to a real API
// server by e2e/export, so it holds only objects that test creates;
// edge.yaml holds the cases that need other Services.
func TestGolden(t *testing.T) {
	for _, tt := range []struct{ in, golden string }{
		{"testdata/policies.yaml", "testdata/linkerd.golden.yaml"},
		{"testdata/edge.yaml", "testdata/edge.golden.yaml"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			data, err := os.ReadFile(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			pols, err := policy.Decode(tt.in, data)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Export(pols, "", "")
			if err != nil {
				t.Fatal(err)
			}
			if *update {
				if err := os.WriteFile(tt.golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(tt.golden)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Fatalf("%s differs (go test ./policy/linkerd -update):\n%s", tt.golden, got)
			}
			// Every document is YAML a kubectl would read.
			for _, doc := range strings.Split(string(got), "\n---\n") {
				var m map[string]any
				if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
					t.Fatalf("document does not parse: %v\n%s", err, doc)
				}
			}
		})
	}
}

// TestServiceOf: a Service is what policy.ServiceFQDN says it is, the
// sidecar's own reading; every other host is outside the cluster.
func TestServiceOf(t *testing.T) {
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
		{"a.b.cluster.local", "", "", 0, false},
		{"a.b.svc.cluster", "", "", 0, false},
		{"10.0.0.1:80", "", "", 0, false},
	}
	for _, tt := range tests {
		ref, ok := serviceOf(tt.in, "shop")
		if ref.name != tt.name || ref.ns != tt.ns || ref.port != tt.port || ok != tt.ok {
			t.Errorf("serviceOf(%q) = %+v %v", tt.in, ref, ok)
		}
	}
	if ref, _ := serviceOf("geo", ""); ref.ns != "default" {
		t.Errorf("a short name in a policy without a namespace: %+v, want namespace default", ref)
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
		if got := retryCodes(parse(tt.in...)); got != tt.want {
			t.Errorf("retryCodes(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestDuration: Linkerd's syntax has no unit below the millisecond, and
// 0ms means no timeout, so other durations round up.
func TestDuration(t *testing.T) {
	for _, tt := range []struct {
		d       time.Duration
		want    string
		rounded bool
	}{
		{2 * time.Second, "2s", false},
		{90 * time.Second, "90s", false},
		{time.Minute, "1m", false},
		{500 * time.Millisecond, "500ms", false},
		{2 * time.Hour, "2h", false},
		{1500 * time.Millisecond, "1500ms", false},
		{500 * time.Microsecond, "1ms", true},
		{time.Nanosecond, "1ms", true},
		{1500 * time.Microsecond, "2ms", true},
		{time.Second - time.Microsecond, "1s", true},
		{time.Minute + time.Nanosecond, "60001ms", true},
		// No next millisecond: the last whole one, never a wrap.
		{math.MaxInt64, "9223372036854ms", true},
		{9223372036854 * time.Millisecond, "9223372036854ms", false},
	} {
		if got, rounded := duration(tt.d); got != tt.want || rounded != tt.rounded {
			t.Errorf("duration(%s) = %q, %v; want %q, %v", tt.d, got, rounded, tt.want, tt.rounded)
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
	annotations := func(p *policy.ResiliencePolicy) (map[string]string, []string) {
		plans := []*plan{newPlan(p, "", "")}
		mergeServices(plans)
		return plans[0].service, plans[0].notes
	}
	got, _ := annotations(decode("{service: geo, circuitBreaker: {openTimeout: 10m}}"))
	want := map[string]string{annAccrual: "consecutive", annMaxFailures: "5", annMinPenalty: "30s", annMaxPenalty: "5m"}
	if !maps.Equal(got, want) {
		t.Errorf("defaults: %v, want %v", got, want)
	}
	got, notes := annotations(decode("{service: geo, outlierDetection: {consecutiveFailures: 0}}"))
	if got != nil {
		t.Errorf("ejection off: annotations %v", got)
	}
	for _, n := range notes {
		if strings.HasPrefix(n, "outlierDetection") {
			t.Errorf("ejection off, yet a note on it: %s", n)
		}
	}
}

package policy

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestJSONDurationsReadLikeYAML(t *testing.T) {
	pols, err := Decode("p.yaml", []byte(`apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: geo}
spec:
  service: geo-service
  timeout: 2s
  retries: {attempts: 2, perTryTimeout: 500ms, retryOn: ["503"]}
  circuitBreaker:
    failureRate: {threshold: 0.5, minRequests: 20, window: 10s}
  outlierDetection: {baseEjectionTime: 1500ms}
`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(pols[0])
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	for _, want := range []string{`"timeout":"2s"`, `"perTryTimeout":"500ms"`, `"retryOn":["503"]`,
		`"base":"25ms"`, `"max":"250ms"`, `"openTimeout":"1m0s"`, `"window":"10s"`, `"consecutiveFailures":5`,
		`"outlierDetection":{"consecutiveFailures":5,"baseEjectionTime":"1.5s","maxEjectionTime":"5m0s","maxEjectionPercent":50}`} {
		if !strings.Contains(got, want) {
			t.Errorf("JSON lacks %s:\n%s", want, got)
		}
	}
}

// TestJSONRoundTrip: the JSON form decodes back to the same spec, which is
// how a sidecar rebuilds a policy from xDS cluster metadata
// (xds/xdsclient.FromCluster).
func TestJSONRoundTrip(t *testing.T) {
	pols, err := Load("testdata/good")
	if err != nil {
		t.Fatal(err)
	}
	off, err := Decode("off.yaml", []byte(header+"spec: {service: off, outlierDetection: {consecutiveFailures: 0, maxEjectionTime: 1s}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	pols = append(pols, append(off, BuiltinDefault())...)
	for _, p := range pols {
		q := *p
		q.Source = ""
		b, err := json.Marshal(&q)
		if err != nil {
			t.Fatal(err)
		}
		back, err := Decode("back.json", b)
		if err != nil {
			t.Fatalf("%s: %v\n%s", p.Source, err, b)
		}
		if !reflect.DeepEqual(back[0].Spec, p.Spec) {
			t.Errorf("%s: round trip\n got %s\nwant %s", p.Source, dump(back[0].Spec), dump(p.Spec))
		}
	}
}

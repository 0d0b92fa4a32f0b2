package policy

import (
	"encoding/json"
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
		`"base":"25ms"`, `"max":"250ms"`, `"openTimeout":"1m0s"`, `"window":"10s"`, `"consecutiveFailures":5`} {
		if !strings.Contains(got, want) {
			t.Errorf("JSON lacks %s:\n%s", want, got)
		}
	}
}

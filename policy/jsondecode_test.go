package policy

import (
	"reflect"
	"testing"
)

// TestDecodeJSON: a .json file is read as JSON, with JSON's syntax and
// escapes, and every problem positioned at its line and column; the
// schema is the YAML one, to the message.
func TestDecodeJSON(t *testing.T) {
	const head = `{"apiVersion": "minimesh.io/v1alpha1", "kind": "ResiliencePolicy", `
	tests := []struct {
		name, data string
		services   []string // the services accepted
		err        string   // or the errors
	}{
		{"one line", head + `"metadata": {"name": "geo"}, "spec": {"service": "geo", "timeout": "2s"}}`, []string{"geo"}, ""},
		{"tabs, escapes, BOM", "\ufeff{\n\t\"apiVersion\": \"minimesh.io\\/v1alpha1\",\n\t\"kind\": \"Resilience\\u0050olicy\",\n\t\"spec\": {\"service\": \"api.example.com\", \"retries\": {\"attempts\": 2, \"budget\": {\"ratio\": 1e-1}}}\n}\n",
			[]string{"api.example.com"}, ""},
		{"a List", `{"apiVersion": "v1", "kind": "List", "items": [` + head + `"spec": {"service": "a"}}, ` + head + `"spec": {"service": "b"}}]}`, []string{"a", "b"}, ""},
		{"empty", " \n\t\n", nil, ""},
		{"null", "null\n", nil, ""},

		{"trailing comma", head + "\n\"spec\": {\"service\": \"geo\",}}",
			nil, `x.json:2:27: invalid JSON: invalid character '}' looking for beginning of object key string`},
		{"comment", head + "\n# geo\n\"spec\": {\"service\": \"geo\"}}",
			nil, `x.json:2:1: invalid JSON: invalid character '#' looking for beginning of object key string`},
		{"unquoted", head + `"spec": {service: geo}}`,
			nil, `x.json:1:77: invalid JSON: invalid character 's' looking for beginning of object key string`},
		{"two values", head + `"spec": {"service": "a"}}` + "\n" + head + `"spec": {"service": "b"}}`,
			nil, `x.json:2:1: invalid JSON: invalid character '{' after top-level value`},
		{"cut short", head + "\n\"spec\": {\"service\": \"geo\"\n",
			nil, `x.json:2:26: invalid JSON: unexpected end of JSON input`},
		{"not UTF-8", head + "\n\"metadata\": {\"name\": \"g\xffo\"}}",
			nil, `x.json:2:24: invalid JSON: not UTF-8`},

		{"schema", head + "\n  \"metadata\": {\"name\": \"géo\"},\n  \"spec\": {\"service\": \"geo\", \"timeout\": \"fast\",\n    \"retries\": {\"attempts\": \"3\", \"perTryTimeout\": 1.0},\n    \"circuitBreaker\": {\"halfOpenRequests\": 1.0, \"consecutiveFailures\": 99999999999999999999}},\n  \"spec\": {}}",
			nil, `x.json:3:41: spec.timeout: want a duration such as 2s or 500ms, got string "fast"` + "\n" +
				`x.json:4:29: spec.retries.attempts: want an integer, got string "3"` + "\n" +
				`x.json:4:51: spec.retries.perTryTimeout: want a duration such as 2s or 500ms, got number 1.0` + "\n" +
				`x.json:5:44: spec.circuitBreaker.halfOpenRequests: want an integer, got number 1.0` + "\n" +
				`x.json:5:72: spec.circuitBreaker.consecutiveFailures: invalid integer 99999999999999999999 (out of range?)` + "\n" +
				`x.json:6:3: spec: duplicate field (first set at 3:3)`},
		{"not an object", "[" + head + `"spec": {"service": "geo"}}]`,
			nil, `x.json:1:1: want a mapping, got a list`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := Decode("x.json", []byte(tt.data))
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.err {
				t.Errorf("errors\n%s\nwant\n%s", got, tt.err)
			}
			if s := services(ps); !reflect.DeepEqual(s, tt.services) {
				t.Errorf("services %q, want %q", s, tt.services)
			}
			if len(ps) > 0 && ps[0].Source != "x.json:1:1" && tt.name != "a List" {
				t.Errorf("Source %q", ps[0].Source)
			}
		})
	}
}

// TestJSONAsYAML: the same text read as JSON and as YAML (a .yaml file
// may hold JSON) makes the same policies.
func TestJSONAsYAML(t *testing.T) {
	data := []byte(`{"apiVersion": "minimesh.io/v1alpha1", "kind": "ResiliencePolicy", "metadata": {"name": "geo", "namespace": "shop", "labels": {"a": "b"}},
 "spec": {"service": "geo:80", "timeout": "2s",
  "retries": {"attempts": 2, "perTryTimeout": "500ms", "retryOn": ["connect-failure", 503, "grpc-unavailable"], "backoff": {"base": "10ms"}, "budget": {"ratio": 0.5, "minPerSecond": 0}},
  "circuitBreaker": {"consecutiveFailures": 3, "failureRate": {"threshold": 0.5, "minRequests": 20, "window": "10s"}, "failOn": ["5xx"]},
  "outlierDetection": {"consecutiveFailures": 0}}}`)
	fromJSON, err := Decode("p.json", data)
	if err != nil {
		t.Fatal(err)
	}
	fromYAML, err := Decode("p.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	fromJSON[0].Source, fromYAML[0].Source = "", ""
	if !reflect.DeepEqual(fromJSON, fromYAML) {
		t.Errorf("JSON %+v\nYAML %+v", fromJSON[0], fromYAML[0])
	}
}

package policy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestAliasesStayInTheirDocument: YAML anchors are per document. yaml.v3
// resolves an alias to an anchor of an earlier document, which let one
// document's 1,000-item list stand in every later one, each under the
// alias bound; such an alias is refused at the alias, with the anchor's
// name and position.
func TestAliasesStayInTheirDocument(t *testing.T) {
	list := "[" + strings.Repeat("503, ", 999) + "503]"
	doc := func(i int, retryOn string) string {
		return "---\n" + header + "spec: {service: s" + string(rune('a'+i%26)) + strings.Repeat("x", i/26) +
			", retries: {attempts: 1, retryOn: " + retryOn + "}}\n"
	}
	var bomb strings.Builder
	bomb.WriteString(doc(0, "&a "+list))
	for i := 1; i <= 200; i++ {
		bomb.WriteString(doc(i, "*a"))
	}
	for _, tt := range []struct {
		name, in string
		want     []string // the errors, in order; none for a file that decodes
		more     int      // errors past want (the file's count line included)
	}{
		{name: "alias in its own document", in: doc(0, "&a [503]") + "---\n" + header + "spec: {service: z, retries: {attempts: 1, retryOn: &a [502]}, circuitBreaker: {failOn: *a}}\n"},
		{name: "alias to an earlier document", in: doc(0, "&a [503]") + doc(1, "*a"),
			want: []string{"f.yaml:8:53: invalid YAML: unknown anchor 'a' referenced (anchors are per document: this one is in an earlier document, at 4:53)"}},
		{name: "anchor named again after the alias", in: doc(0, "&a [503]") + "---\n" + header + "spec: {service: b, retries: {attempts: 1, retryOn: *a}, circuitBreaker: {failOn: &a [5xx]}}\n",
			want: []string{"f.yaml:8:52: invalid YAML: unknown anchor 'a' referenced (anchors are per document: this one is in an earlier document, at 4:53)"}},
		{name: "whole spec of an earlier document", in: "---\n" + header + "spec: &s {service: a}\n---\n" + header + "metadata: {name: b}\nspec: *s\n",
			want: []string{"f.yaml:9:7: invalid YAML: unknown anchor 's' referenced (anchors are per document: this one is in an earlier document, at 4:7)"}},
		{name: "a document that is an alias", in: "--- &d\n" + header + "spec: {service: a}\n--- *d\n",
			want: []string{"f.yaml:5:5: invalid YAML: unknown anchor 'd' referenced (anchors are per document: this one is in an earlier document, at 1:5)"}},
		{name: "200 documents that alias the first one's list", in: bomb.String(),
			want: []string{"f.yaml:8:53: invalid YAML: unknown anchor 'a' referenced (anchors are per document: this one is in an earlier document, at 4:53)"},
			more: maxFileErrors},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := Decode("f.yaml", []byte(tt.in))
			if len(tt.want) == 0 {
				if err != nil || len(ps) == 0 {
					t.Fatalf("got %d policies, %v", len(ps), err)
				}
				return
			}
			var list ErrorList
			if !errors.As(err, &list) || len(list) != len(tt.want)+tt.more {
				t.Fatalf("got %d policies and %d errors, want %d: %.1000v", len(ps), len(list), len(tt.want)+tt.more, err)
			}
			for i, w := range tt.want {
				if got := list[i].Error(); got != w {
					t.Errorf("error %d:\n got %s\nwant %s", i, got, w)
				}
			}
		})
	}
}

// TestDocumentBOM: files joined with cat carry a byte order mark at the
// start of a later document, which YAML allows there and kubectl takes;
// elsewhere it stays part of what it precedes, and a field path that
// holds it (or another character that does not show) is quoted.
func TestDocumentBOM(t *testing.T) {
	const b = "\ufeff"
	doc := func(s string) string { return header + "spec: {service: " + s + "}\n" }
	for _, tt := range []struct{ name, in, want string }{
		{"at the stream's start", b + doc("a"), ""},
		{"after ---", doc("a") + "---\n" + b + doc("b"), ""},
		{"after --- with CRLF", doc("a") + "---\r\n" + b + doc("b"), ""},
		{"before ---", doc("a") + b + "---\n" + doc("b"), ""},
		{"before --- with the document on its line", doc("a") + b + "--- " + "{apiVersion: minimesh.io/v1alpha1, kind: ResiliencePolicy, spec: {service: b}}\n", ""},
		{"after ...", doc("a") + "...\n" + b + "---\n" + doc("b"), ""},
		{"inside a document", doc("a") + b + "status: {}\n",
			`f.yaml:4:1: "\ufeffstatus": unknown field "\ufeffstatus" (allowed: apiVersion, kind, metadata, spec, status)`},
		{"after a marker with content", doc("a") + "--- {apiVersion: minimesh.io/v1alpha1, kind: ResiliencePolicy,\n" + b + "spec: {service: b}}\n",
			`f.yaml:4:5: spec: required field is missing: want a mapping with at least service` + "\n" +
				`f.yaml:5:1: "\ufeffspec": unknown field "\ufeffspec" (allowed: apiVersion, kind, metadata, spec, status)`},
		{"a direction override in a key", doc("a") + "spec\u202e: {}\n",
			`f.yaml:4:1: "spec\u202e": unknown field "spec\u202e" (allowed: apiVersion, kind, metadata, spec, status)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := Decode("f.yaml", []byte(tt.in))
			if tt.want == "" {
				if err != nil || len(ps) < 1 {
					t.Fatalf("got %d policies, %v", len(ps), err)
				}
				return
			}
			if err == nil || err.Error() != tt.want {
				t.Fatalf("got\n%v\nwant\n%s", err, tt.want)
			}
		})
	}
}

// TestTimeoutBounds: timeout and perTryTimeout have an upper bound, as
// the other durations do, for policies from xDS (Validate) as from files.
func TestTimeoutBounds(t *testing.T) {
	for _, tt := range []struct {
		name            string
		timeout, perTry time.Duration
		want            string
	}{
		{"a day each", LongestTimeout, LongestTimeout, ""},
		{"timeout at Duration's limit", 1<<63 - 1, 0, "spec.timeout: must be > 0 and <= 24h0m0s (omit it for no timeout), got 2562047h47m16.854775807s"},
		{"perTryTimeout past a day", 0, LongestTimeout + time.Nanosecond, "spec.retries.perTryTimeout: must be > 0 and <= 24h0m0s (omit it for none), got 24h0m0.000000001s"},
		{"negative timeout", -time.Second, 0, "spec.timeout: must be > 0 and <= 24h0m0s (omit it for no timeout), got -1s"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := BuiltinDefault()
			p.Spec.Timeout = tt.timeout
			p.Spec.Retries = &Retries{Attempts: 1, PerTryTimeout: tt.perTry, RetryOn: DefaultRetryOn,
				Backoff: Backoff{Base: DefaultBackoffBase, Max: DefaultBackoffMax}, Budget: Budget{Ratio: DefaultBudgetRatio}}
			err := p.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || err.Error() != tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestHostileValuesEchoCapped: wherever a huge scalar or key sits, each
// problem is one positioned line that repeats at most the start of it.
func TestHostileValuesEchoCapped(t *testing.T) {
	huge := strings.Repeat("x", 1<<20)
	digits := strings.Repeat("9", 1<<20)
	for _, tt := range []struct{ name, yaml string }{
		{"service", header + "spec:\n  service: " + huge + "\n"},
		{"service with a port", header + "spec:\n  service: a:" + digits + "\n"},
		{"kind", "apiVersion: minimesh.io/v1alpha1\nkind: " + huge + "\nspec: {service: a}\n"},
		{"apiVersion", "apiVersion: " + huge + "\nkind: ResiliencePolicy\nspec: {service: a}\n"},
		{"name", header + "metadata: {name: " + huge + "}\nspec: {service: a}\n"},
		{"condition", header + "spec:\n  service: a\n  retries: {attempts: 1, retryOn: [" + huge + "]}\n"},
		{"status code", header + "spec:\n  service: a\n  circuitBreaker: {failOn: [" + digits + "]}\n"},
		{"integer", header + "spec:\n  service: a\n  retries: {attempts: " + digits + "}\n"},
		{"number", header + "spec:\n  service: a\n  retries: {attempts: 1, budget: {ratio: " + digits + ".5}}\n"},
		{"duration", header + "spec:\n  service: a\n  timeout: " + huge + "\n"},
		{"unknown key", header + "spec:\n  service: a\n  " + huge + ": 1\n"},
		{"duplicate key", header + "spec:\n  service: a\n  " + huge + ": 1\n  " + huge + ": 2\n"},
		{"tag", header + "spec:\n  service: !" + huge + " a\n"},
		{"anchor", header + "spec:\n  service: *" + huge + "\n"},
		{"not a mapping", huge + "\n"},
		{"multi-line", header + "spec:\n  service: |\n" + strings.Repeat("    "+huge[:100]+"\n", 1000)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode("f.yaml", []byte(tt.yaml))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("%T %.300v", err, err)
			}
			for _, e := range list {
				if msg := e.Error(); len(msg) > 400 || !strings.HasPrefix(msg, fmt.Sprintf("f.yaml:%d:%d: ", e.Line, e.Column)) || e.Line < 1 || strings.Contains(msg, "\n") {
					t.Errorf("%d-byte error: %.500q", len(msg), msg)
				}
			}
		})
	}
}

// TestLongestValues: values as long as a field takes pass the length
// bound; one byte more is refused with the bound.
func TestLongestValues(t *testing.T) {
	host := strings.Repeat(strings.Repeat("a", 62)+".", 4)[:253-len(".b")] + ".b"
	if _, err := Decode("f.yaml", []byte(header+"spec:\n  service: "+host+":65535\n")); err != nil {
		t.Fatalf("a 253-byte host with a port: %v", err)
	}
	_, err := Decode("f.yaml", []byte(header+"spec:\n  service: "+host+":065535\n"))
	if err == nil || !strings.Contains(err.Error(), "f.yaml:4:12: spec.service: longer than this field takes (at most 259 bytes)") {
		t.Fatalf("260 bytes: %v", err)
	}
}

// TestErrorsCapped: a file with thousands of problems reports the first
// maxFileErrors and a positioned count of the rest.
func TestErrorsCapped(t *testing.T) {
	items := strings.Repeat("teapot, ", 1000)
	_, err := Decode("f.yaml", []byte(header+"spec:\n  service: a\n  retries: {attempts: 1, retryOn: ["+items+"]}\n"))
	var list ErrorList
	if !errors.As(err, &list) || len(list) != maxFileErrors+1 {
		t.Fatalf("%d problems reported: %.300v", len(list), err)
	}
	if last := list[len(list)-1].Error(); last != "f.yaml:5:836: 900 more problems in this file not shown" {
		t.Fatalf("last line %q", last)
	}
	// A policy whose problems were all past the cap is still bad: it
	// must not claim its service against the other files of a Load.
	f := decodeFile("f.yaml", []byte(header+"spec:\n  service: a\n  retries: {attempts: 1, retryOn: ["+items+"]}\n---\n"+
		header+"spec:\n  service: b\n  timeout: 0s\n---\n"+header+"spec:\n  service: c\n"),
		&claims{first: map[claim]*ResiliencePolicy{}})
	if len(f.good) != 1 || f.good[0].Spec.Service != "c" || f.dropped != 901 {
		t.Fatalf("%d good policies, %d problems dropped", len(f.good), f.dropped)
	}
}

package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzDecode checks that no input makes Decode panic, that every error
// is one positioned line, and that whatever Decode accepts validates,
// read as YAML and as JSON (a .json file).
func FuzzDecode(f *testing.F) {
	for _, pattern := range []string{"testdata/good/*", "testdata/bad/*.yaml"} {
		files, _ := filepath.Glob(pattern)
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Add([]byte("\ufeff{\"apiVersion\": \"minimesh.io\\/v1alpha1\", \"kind\": \"ResiliencePolicy\", \"spec\": {\"service\": \"a\",}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, name := range []string{"f.yaml", "f.json"} {
			checkDecode(t, name, data)
		}
	})
}

func checkDecode(t *testing.T, name string, data []byte) {
	ps, err := Decode(name, data)
	if err != nil {
		if ps != nil {
			t.Fatalf("%s: policies returned with an error", name)
		}
		var list ErrorList
		if !errors.As(err, &list) || len(list) == 0 {
			t.Fatalf("%s: error is %T %v, want a non-empty ErrorList", name, err, err)
		}
		for _, e := range list {
			if e.File != name || e.Line < 1 || e.Column < 1 {
				t.Errorf("badly positioned error %+v", e)
			}
			if strings.ContainsAny(e.Error(), "\r\n") {
				t.Errorf("error spans lines: %q", e.Error())
			}
		}
		return
	}
	seen := map[string]bool{}
	for _, p := range ps {
		if err := p.Validate(); err != nil {
			t.Errorf("%s: accepted policy does not validate: %v", name, err)
		}
		if p.APIVersion != APIVersion || p.Kind != Kind || !strings.HasPrefix(p.Source, name+":") {
			t.Errorf("header not set: %q %q %q", p.APIVersion, p.Kind, p.Source)
		}
		if seen[p.Spec.Service] {
			t.Errorf("%s: service %q accepted twice", name, p.Spec.Service)
		}
		seen[p.Spec.Service] = true
	}
	table := NewTable(ps, "ns")
	for _, p := range ps {
		if table.Lookup(p.Spec.Service) == nil {
			t.Errorf("Lookup(%q) = nil", p.Spec.Service)
		}
	}
}

// FuzzLookup checks that no authority makes Lookup panic or return nil.
func FuzzLookup(f *testing.F) {
	for _, a := range append(lookupAuthorities, "", "[", "]:", "A.B.", ":::", "[::1]:") {
		f.Add(a)
	}
	table := lookupTable()
	f.Fuzz(func(t *testing.T, authority string) {
		if table.Lookup(authority) == nil {
			t.Fatal("nil policy")
		}
	})
}

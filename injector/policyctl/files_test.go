package policyctl

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds"
)

// sink records what would be served, and passes it on to next if set.
type sink struct {
	global []*policy.ResiliencePolicy
	ns     map[string][]*policy.ResiliencePolicy
	sets   int
	next   Sink
}

func (s *sink) Set(global []*policy.ResiliencePolicy, byNS map[string][]*policy.ResiliencePolicy) error {
	if s.next != nil {
		if err := s.next.Set(global, byNS); err != nil {
			return err
		}
	}
	s.global, s.ns = global, byNS
	s.sets++
	return nil
}

func write(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.yaml", "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: all}\nspec: {service: \"*\"}\n---\napiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo, namespace: shop}\nspec: {service: geo}\n")
	s := &sink{}
	f := &Files{Dir: dir, Sink: s, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := f.Load(); err != nil {
		t.Fatal(err)
	}
	if len(s.global) != 1 || len(s.ns["shop"]) != 1 {
		t.Fatalf("global %d, shop %d: want 1 and 1", len(s.global), len(s.ns["shop"]))
	}
	sets := s.sets
	if err := f.Load(); err != nil || s.sets != sets {
		t.Fatalf("an unchanged directory republished (%v)", err)
	}
	// A bad file: the error names the place; the last good set stays.
	write(t, dir, "b.yaml", "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nspec: {service: geo, timeout: fast}\n")
	err := f.Load()
	if err == nil || !strings.Contains(err.Error(), "b.yaml:3:") {
		t.Fatalf("bad file: %v", err)
	}
	if len(s.ns["shop"]) != 1 || s.sets != sets {
		t.Fatal("a bad file changed what is served")
	}
	// The namespace's policy goes away: its namespace is emptied.
	os.Remove(filepath.Join(dir, "b.yaml"))
	write(t, dir, "a.yaml", "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: all}\nspec: {service: \"*\"}\n")
	if err := f.Load(); err != nil {
		t.Fatal(err)
	}
	if ps := s.ns["shop"]; len(ps) != 0 || len(s.global) != 1 {
		t.Fatalf("after shop's policy was removed: shop %v, global %d", ps, len(s.global))
	}
}

// TestFilesPerNamespace: a namespace's own policy for a service that has
// a cluster-wide one, or one in another namespace, is served in its
// namespace over the others, as for ResiliencePolicy objects (the same
// merge: xds.Merge behind the server's Set); two for one service in one
// namespace, or two cluster-wide, are refused at the second.
func TestFilesPerNamespace(t *testing.T) {
	doc := func(ns, timeout string) string {
		meta := "{name: geo}"
		if ns != "" {
			meta = "{name: geo, namespace: " + ns + "}"
		}
		return "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: " + meta + "\nspec: {service: geo, timeout: " + timeout + "}\n"
	}
	tests := []struct {
		name  string
		files map[string]string
		// served is the timeout of geo a sidecar of each namespace
		// gets ("" none); err, when set, is the refusal instead.
		served map[string]string
		err    string
	}{
		{"cluster-wide and shop's", map[string]string{"a.yaml": doc("", "5s") + "---\n" + doc("shop", "1s")},
			map[string]string{"shop": "1s", "web": "5s", "other": "5s"}, ""},
		{"web's and shop's", map[string]string{"a.yaml": doc("web", "5s"), "b.yaml": doc("shop", "1s")},
			map[string]string{"shop": "1s", "web": "5s", "other": ""}, ""},
		{"shop's twice", map[string]string{"a.yaml": doc("shop", "5s"), "b.yaml": doc("shop", "1s")},
			nil, `b.yaml:4:17: spec.service: service "geo" already has a policy in namespace "shop" at {dir}/a.yaml:1:1`},
		{"cluster-wide twice", map[string]string{"a.yaml": doc("", "5s") + "---\n" + doc("", "1s")},
			nil, `a.yaml:9:17: spec.service: service "geo" already has a cluster-wide policy at {dir}/a.yaml:1:1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, body := range tt.files {
				write(t, dir, name, body)
			}
			// The real server behind the sink: it refuses a set in which
			// two policies would reach one sidecar under one name.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s := &sink{next: xds.NewServer(ctx, nil)}
			f := &Files{Dir: dir, Sink: s, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			err := f.Load()
			if tt.err != "" {
				if want := strings.ReplaceAll(tt.err, "{dir}", dir); err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("Load: %v, want %q", err, want)
				}
				if s.sets != 0 {
					t.Fatal("a refused set was published")
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			for ns, want := range tt.served {
				got := ""
				for _, p := range xds.Merge(s.global, s.ns[ns]) {
					if p.Spec.Service == "geo" {
						got += p.Spec.Timeout.String()
					}
				}
				if got != want {
					t.Errorf("a sidecar of %s is served geo with timeout %q, want %q", ns, got, want)
				}
			}
		})
	}
}

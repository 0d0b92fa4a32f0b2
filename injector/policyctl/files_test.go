package policyctl

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/policy"
)

// sink records what would be served.
type sink struct {
	global []*policy.ResiliencePolicy
	ns     map[string][]*policy.ResiliencePolicy
	sets   int
}

func (s *sink) Set(global []*policy.ResiliencePolicy, byNS map[string][]*policy.ResiliencePolicy) error {
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

package xds

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/policy"
)

// TestEveryPolicyServed is the controller → sidecar path of policy files
// (minimesh controller --policy-dir): every policy the file loader keeps
// reaches the sidecar as it went in. "geo" (any port) and "geo:80" used to
// share the cluster outbound|80||geo.<ns>.svc.cluster.local, and the
// snapshot cache, keyed by name, served only one of them.
func TestEveryPolicyServed(t *testing.T) {
	dir := t.TempDir()
	const file = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: geo-any}
spec: {service: geo, timeout: 7s, circuitBreaker: {consecutiveFailures: 7}}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: geo-80}
spec: {service: "geo:80", timeout: 3s, circuitBreaker: {consecutiveFailures: 3}}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: geo-8080}
spec: {service: "geo:8080", timeout: 8s}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: geo-fqdn}
spec: {service: geo.default.svc.cluster.local, timeout: 4s}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: defaults}
spec: {service: "*", timeout: 9s}
`
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	pols, err := policy.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	// As policyctl.Files sets them: no metadata.namespace, cluster-wide.
	if err := s.Set(pols, nil); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	r := newRecorder()
	go client(addr, "default", r).Run(ctx)
	waitFor(t, "the policies", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.last) > 0
	})
	r.mu.Lock()
	got := r.last
	r.mu.Unlock()
	if len(got) != len(pols) {
		var svcs []string
		for _, p := range got {
			svcs = append(svcs, p.Spec.Service)
		}
		t.Fatalf("the sidecar got %d policies (%s), the files hold %d", len(got), strings.Join(svcs, ", "), len(pols))
	}
	for _, want := range pols {
		var found bool
		for _, p := range got {
			found = found || p.Metadata == want.Metadata && reflect.DeepEqual(p.Spec, want.Spec)
		}
		if !found {
			t.Errorf("policy %s (service %s) did not reach the sidecar as it is", want.Metadata.Name, want.Spec.Service)
		}
	}
}

// TestSharedNameRefused: a set in which two policies would share a
// cluster name (the same service twice, which a controller may be handed
// from two objects) is an error naming both as it is set, with no sidecar
// connected yet; none of the two is dropped silently.
func TestSharedNameRefused(t *testing.T) {
	for _, tt := range []struct {
		name   string
		global []*policy.ResiliencePolicy
		byNS   map[string][]*policy.ResiliencePolicy
		want   []string
	}{
		{"a namespace's", nil, map[string][]*policy.ResiliencePolicy{"shop": append(named(t, "a", "shop", "{service: geo}"), named(t, "b", "shop", "{service: geo, timeout: 1s}")...)},
			[]string{"namespace shop", `"a"`, `"b"`, "outbound|0||geo.shop.svc.cluster.local"}},
		{"cluster-wide defaults", append(named(t, "d1", "", `{service: "*"}`), named(t, "d2", "", `{service: "*", timeout: 1s}`)...), nil,
			[]string{"cluster-wide", `"d1"`, `"d2"`, "minimesh|defaults"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := NewServer(context.Background(), nil)
			err := s.Set(tt.global, tt.byNS)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
		})
	}
}

// named is one policy of the given name and namespace.
func named(t testing.TB, name, ns, spec string) []*policy.ResiliencePolicy {
	t.Helper()
	ps, err := policy.Decode(name+".yaml", []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: "+name+", namespace: \""+ns+"\"}\nspec: "+spec+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExportClusterWideShortName: a cluster-wide policy (of the
// controller's namespace, or one naming none) for a short service name
// governs that name in every sidecar's own namespace (docs/policy.md,
// "Matching"; docs/controlplane.md). The exports resolved it in the
// policy's namespace, attaching Linkerd routes and Envoy domains to
// reviews.minimesh, a Service its sidecars never call. Now: exported for
// --namespace only, with a comment, else not at all, with a warning
// naming the policy and host; namespace-local and qualified policies are
// exported as before.
func TestExportClusterWideShortName(t *testing.T) {
	for _, tc := range []struct {
		name, policy string
		args         []string
		warn         string   // on stderr, "" none
		want, never  []string // in the output, by target ("" both)
	}{
		{
			name: "of the controller's namespace", policy: policyDoc("reviews-cw", "minimesh", "reviews"),
			warn:  `cluster-wide policy reviews-cw (namespace minimesh, `,
			want:  []string{`# not carried over: cluster-wide policy reviews-cw`, `service "reviews" is a short name`},
			never: []string{"reviews.minimesh", "namespace: minimesh\n"},
		},
		{
			name: "of the controller's namespace, --namespace shop", policy: policyDoc("reviews-cw", "minimesh", "reviews"), args: []string{"--namespace", "shop"},
			want:  []string{"# cluster-wide policy reviews-cw", "exported for namespace shop only", "shop"},
			never: []string{"reviews.minimesh", "namespace: minimesh\n", "not carried over: cluster-wide"},
		},
		{
			name: "naming no namespace", policy: policyDoc("reviews-any", "", "reviews:9080"),
			warn:  `cluster-wide policy reviews-any (`,
			want:  []string{`# not carried over: cluster-wide policy reviews-any`},
			never: []string{"reviews.default", "namespace: default\n"},
		},
		{
			name: "another --cluster-namespace", policy: policyDoc("reviews-cw", "mesh-system", "reviews"), args: []string{"--cluster-namespace", "mesh-system"},
			warn:  `cluster-wide policy reviews-cw (namespace mesh-system, `,
			never: []string{"reviews.mesh-system"},
		},
		{
			name: "of one namespace", policy: policyDoc("reviews-local", "bakery-ia", "reviews"),
			want: []string{"bakery-ia"}, never: []string{"cluster-wide policy"},
		},
		{
			name: "cluster-wide, qualified", policy: policyDoc("reviews-q", "minimesh", "reviews.shop"),
			want: []string{"shop"}, never: []string{"cluster-wide policy", "reviews.minimesh"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "p.yaml")
			if err := os.WriteFile(file, []byte(tc.policy), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, to := range []string{"linkerd", "envoy"} {
				args := append([]string{"policy", "export", "--to", to}, tc.args...)
				code, out, errOut := run(append(args, file)...)
				if code != 0 {
					t.Fatalf("--to %s: exit %d: %s", to, code, errOut)
				}
				if tc.warn == "" && errOut != "" || tc.warn != "" && (!strings.Contains(errOut, "warning: "+tc.warn) || !strings.Contains(errOut, `"reviews`)) {
					t.Errorf("--to %s: stderr %q, want a warning %q naming the host", to, errOut, tc.warn)
				}
				for _, w := range tc.want {
					if !strings.Contains(out, w) {
						t.Errorf("--to %s: output lacks %q:\n%s", to, w, out)
					}
				}
				for _, n := range tc.never {
					if strings.Contains(out, n) {
						t.Errorf("--to %s: output has %q:\n%s", to, n, out)
					}
				}
			}
		})
	}
}

// policyDoc is a ResiliencePolicy file of one policy: name in namespace
// ns ("" none) for service, with a 2 s timeout.
func policyDoc(name, ns, service string) string {
	meta := "{name: " + name + "}"
	if ns != "" {
		meta = "{name: " + name + ", namespace: " + ns + "}"
	}
	return "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: " + meta + "\nspec:\n  service: " + service + "\n  timeout: 2s\n"
}

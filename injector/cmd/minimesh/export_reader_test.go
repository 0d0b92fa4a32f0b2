package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExportEnvoyReaderNamespace: the Envoy export is what the proxies
// of one namespace are served (--namespace, or the one namespace the
// policies name), as the control plane serves them: that namespace's
// policies and the cluster-wide ones (xds.Merge), never another
// namespace's.
// Before, `--namespace shop` over a policy of web for `reviews` gave
// shop's proxies a virtual host for the bare Host `reviews` routed to
// reviews.web's cluster.
func TestExportEnvoyReaderNamespace(t *testing.T) {
	for _, tc := range []struct {
		name   string
		files  []string // one policy each
		args   []string
		code   int
		warn   string   // on stderr ("" none)
		want   []string // in stdout (stderr when code != 0)
		never  []string
		target string // "" envoy
	}{
		{
			name: "another namespace's policy", files: []string{policyDoc("reviews", "web", "reviews")}, args: []string{"--namespace", "shop"},
			warn:  "policy reviews (namespace web, ",
			want:  []string{"# not carried over: policy reviews (namespace web, ", "export it with --namespace web"},
			never: []string{"- reviews\n", "reviews.web.svc.cluster.local", "reviews.shop.svc.cluster.local"},
		},
		{
			name: "the policies' one namespace", files: []string{policyDoc("reviews", "web", "reviews")},
			want: []string{"# the resources the proxies of namespace web are served", "- reviews\n", "- reviews:80\n", "outbound|0||reviews.web.svc.cluster.local"},
		},
		{
			name: "a qualified policy of another namespace", files: []string{policyDoc("reviews", "web", "reviews.shop"), policyDoc("geo", "shop", "geo")}, args: []string{"--namespace", "shop"},
			warn:  "policy reviews (namespace web, ",
			want:  []string{"outbound|0||geo.shop.svc.cluster.local", "- geo\n"},
			never: []string{"reviews.shop.svc.cluster.local"},
		},
		{
			name: "policies of two namespaces", files: []string{policyDoc("reviews", "web", "reviews"), policyDoc("geo", "shop", "geo")},
			code: 1, want: []string{"namespaces web, shop", "--namespace"},
		},
		{
			name: "cluster-wide, qualified, served", files: []string{policyDoc("reviews-cw", "minimesh", "reviews.shop")}, args: []string{"--namespace", "web"},
			want: []string{"outbound|0|reviews.shop|reviews.shop.svc.cluster.local", "- reviews.shop\n"},
		},
		{
			name: "--eds", files: []string{policyDoc("reviews", "shop", "reviews:9080")}, args: []string{"--namespace", "shop", "--eds"},
			want:  []string{"type: EDS", "service_name: reviews.shop.svc.cluster.local:9080", "ads: {}"},
			never: []string{"STRICT_DNS", "load_assignment"},
		},
		{
			name: "without --eds", files: []string{policyDoc("reviews", "shop", "reviews:9080")}, args: []string{"--namespace", "shop"},
			want: []string{"type: STRICT_DNS", "# not carried over: reviews: the cluster is STRICT_DNS on reviews.shop.svc.cluster.local"},
		},
		{
			name: "--eds is Envoy's", files: []string{policyDoc("reviews", "shop", "reviews")}, args: []string{"--eds"}, target: "linkerd",
			code: 1, want: []string{"--eds is for --to envoy"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var paths []string
			for i, f := range tc.files {
				p := filepath.Join(dir, string(rune('a'+i))+".yaml")
				if err := os.WriteFile(p, []byte(f), 0o644); err != nil {
					t.Fatal(err)
				}
				paths = append(paths, p)
			}
			to := tc.target
			if to == "" {
				to = "envoy"
			}
			args := append(append([]string{"policy", "export", "--to", to}, tc.args...), paths...)
			code, out, errOut := run(args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, errOut)
			}
			if tc.code != 0 {
				out = errOut
			} else if tc.warn == "" && errOut != "" || tc.warn != "" && !strings.Contains(errOut, "warning: "+tc.warn) {
				t.Errorf("stderr %q, want a warning %q", errOut, tc.warn)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, n := range tc.never {
				if strings.Contains(out, n) {
					t.Errorf("output has %q:\n%s", n, out)
				}
			}
		})
	}
}

package xdsclient_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/policy/envoy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// clusterFiles are the policies the clusters of the tests below are made
// from: every good file of the decoder's tests and of the exporters'.
var clusterFiles = []string{"../../policy/testdata/good/*.yaml", "../../policy/testdata/good/*.json", "../../policy/linkerd/testdata/policies.yaml", "../../policy/linkerd/testdata/edge.yaml"}

// encodedClusters are the clusters the control plane sends a sidecar of
// ns for the policies of each of clusterFiles (the "*" policy's
// included), encoded as on the wire.
func encodedClusters(tb testing.TB, ns string) [][]byte {
	tb.Helper()
	var out [][]byte
	for _, glob := range clusterFiles {
		files, err := filepath.Glob(glob)
		if err != nil || len(files) == 0 {
			tb.Fatalf("%s: %v", glob, err)
		}
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				tb.Fatal(err)
			}
			pols, err := policy.Decode(file, data)
			if err != nil {
				tb.Fatal(err)
			}
			res, err := envoy.TranslateFor(pols, ns)
			if err != nil {
				tb.Fatal(err)
			}
			clusters := res.Clusters
			for _, p := range pols {
				if p.Spec.Service == policy.DefaultService {
					c, err := envoy.DefaultsCluster(p)
					if err != nil {
						tb.Fatal(err)
					}
					clusters = append(clusters, c)
				}
			}
			for _, c := range clusters {
				b, err := proto.Marshal(c)
				if err != nil {
					tb.Fatal(err)
				}
				out = append(out, b)
			}
		}
	}
	return out
}

// BenchmarkFromCluster decodes a policy's cluster as a sidecar decodes
// each of a CDS response's: "full" is policy/testdata/good/full.yaml
// (every field set), "long" the same with a 180-character name and a
// 50-character service, the largest policies of xds's bound tests (1.9
// KB on the wire: 1,670 of them fill a 3 MiB response). The figures are
// in docs/benchmarks.md, "Decoding policies from CDS".
func BenchmarkFromCluster(b *testing.B) {
	data, err := os.ReadFile("../../policy/testdata/good/full.yaml")
	if err != nil {
		b.Fatal(err)
	}
	long := strings.NewReplacer("name: nominatim,", "name: "+strings.Repeat("n", 180)+",", "service: nominatim-service", "service: "+strings.Repeat("s", 50)).Replace(string(data))
	for _, bm := range []struct{ name, doc string }{{"full", string(data)}, {"long", long}} {
		pols, err := policy.Decode("full.yaml", []byte(bm.doc))
		if err != nil {
			b.Fatal(err)
		}
		res, err := envoy.TranslateFor(pols, "bakery-ia")
		if err != nil || len(res.Clusters) != 1 {
			b.Fatalf("%v, %d clusters", err, len(res.Clusters))
		}
		c, err := proto.Marshal(res.Clusters[0])
		if err != nil {
			b.Fatal(err)
		}
		b.Run(bm.name, func(b *testing.B) {
			b.SetBytes(int64(len(c)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := xdsclient.FromCluster(c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package xdsclient_test

import (
	"encoding/json"
	"reflect"
	"regexp"
	"runtime"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// fromClusterOneLine is FromCluster as it was before 2026-12-06: the
// policy as one line of JSON, read by the YAML decoder. The test below
// holds the cheaper FromCluster to it.
func fromClusterOneLine(b []byte) (*policy.ResiliencePolicy, error) {
	cname, md, err := xdsclient.ClusterMetadata(b)
	if err != nil {
		return nil, err
	}
	spec, ok := md["spec"].(map[string]any)
	if !ok {
		return nil, nil
	}
	name, _ := md["policy"].(string)
	ns, _ := md["namespace"].(string)
	doc, err := json.Marshal(map[string]any{
		"apiVersion": policy.APIVersion, "kind": policy.Kind,
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	})
	if err != nil {
		return nil, err
	}
	pols, err := policy.Decode("xds cluster "+cname, doc)
	if err != nil {
		return nil, err
	}
	return pols[0], nil
}

// position is the line:col of an error in the document FromCluster
// decodes, which only FromCluster ever sees.
var position = regexp.MustCompile(`(?m)^(xds cluster [^:]*):\d+:\d+: `)

// TestFromClusterAsBefore: FromCluster decodes every cluster the control
// plane makes of the good policies of the decoder's and the exporters'
// tests (for sidecars of three namespaces) to the same policy as before,
// and refuses what it refused, with the same messages (but for their
// line:col in a document no one has).
func TestFromClusterAsBefore(t *testing.T) {
	var clusters [][]byte
	for _, ns := range []string{"default", "shop", "bakery-ia"} {
		clusters = append(clusters, encodedClusters(t, ns)...)
	}
	if len(clusters) < 30 {
		t.Fatalf("only %d clusters", len(clusters))
	}
	bad := func(name string, md map[string]any) []byte {
		st, err := structpb.NewStruct(md)
		if err != nil {
			t.Fatal(err)
		}
		b, err := proto.Marshal(&clusterv3.Cluster{Name: name, Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{xdsclient.MetadataKey: st}}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	refused := [][]byte{
		bad("wrong-types", map[string]any{"policy": "geo", "spec": map[string]any{"service": "geo", "timeout": 2.0,
			"retries": map[string]any{"attempts": 2.5, "retryOn": []any{"teapot", true}}}}),
		// An unknown field (halfOpen here once) is left out since
		// 2026-12-06 (TestUnknownFieldTolerated): the rest still refuses.
		bad("invalid", map[string]any{"policy": "geo", "spec": map[string]any{"service": "geo",
			"circuitBreaker": map[string]any{"consecutiveFailures": 0.0, "failureRate": map[string]any{"threshold": 2.0}}}}),
		bad("bounds", map[string]any{"policy": "geo", "namespace": "Not a label", "spec": map[string]any{"service": "geo:99999",
			"outlierDetection": map[string]any{"baseEjectionTime": "2h", "maxEjectionTime": "1s", "maxEjectionPercent": 0.0}}}),
		bad("empty", map[string]any{"policy": "geo", "spec": map[string]any{}}),
		bad("strings", map[string]any{"policy": "g\u2028\"\\<&>", "spec": map[string]any{"service": "\u0085\x7f\t", "timeout": nil}}),
	}
	for i, b := range append(clusters, refused...) {
		got, err := xdsclient.FromCluster(b)
		want, wantErr := fromClusterOneLine(b)
		if i >= len(clusters) && (err == nil || wantErr == nil) {
			t.Errorf("refused[%d]: accepted (%v, before %v)", i-len(clusters), err, wantErr)
			continue
		}
		if err != nil || wantErr != nil {
			if g, w := position.ReplaceAllString(errString(err), "$1: "), position.ReplaceAllString(errString(wantErr), "$1: "); g != w {
				t.Errorf("cluster %d: error\n%s\nbefore:\n%s", i, g, w)
			}
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("cluster %d: decoded\n%+v\nbefore\n%+v", i, got, want)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// TestFromClusterAllocation: decoding a policy's cluster allocates well
// under the 142 KB it took as one line of JSON (48 KB since; a full CDS
// response is about 2,500 of them, docs/controlplane.md).
func TestFromClusterAllocation(t *testing.T) {
	b := encodedClusters(t, "bakery-ia")[0] // full.yaml: every field
	const runs = 50
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		if _, err := xdsclient.FromCluster(b); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / runs; per > 80<<10 {
		t.Errorf("FromCluster allocates %d bytes a policy, want at most %d", per, 80<<10)
	}
}

package xdsclient_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/policy/envoy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// TestLargestResponseWithinBounds: the bounds on what a CDS response
// makes the sidecar decode leave room for every real one: 2,400 of the
// largest policies (full.yaml, every field set, with 180-character names
// and 50-character services: 1.9 KB each on the wire, more than the
// controller's 3 MiB holds) decode, each well within MaxClusterValues
// and MaxMetadataBytes, all within MaxResponseValues.
func TestLargestResponseWithinBounds(t *testing.T) {
	data, err := os.ReadFile("../../policy/testdata/good/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const n = 2400
	var docs strings.Builder
	for i := range n {
		fmt.Fprintf(&docs, "---\n%s", strings.NewReplacer(
			"name: nominatim,", fmt.Sprintf("name: n%0179d,", i),
			"service: nominatim-service", fmt.Sprintf("service: s%049d", i)).Replace(string(data)))
	}
	pols, err := policy.Decode("full.yaml", []byte(docs.String()))
	if err != nil {
		t.Fatal(err)
	}
	res, err := envoy.TranslateFor(pols, "bakery-ia")
	if err != nil || len(res.Clusters) != n {
		t.Fatalf("%v, %d clusters", err, len(res.Clusters))
	}
	clusters := make([][]byte, n)
	values, size := 0, 0
	for i, c := range res.Clusters {
		if clusters[i], err = proto.Marshal(c); err != nil {
			t.Fatal(err)
		}
		v, mdBytes, err := xdsclient.MetadataValues(clusters[i])
		if err != nil {
			t.Fatal(err)
		}
		values += v
		size += len(clusters[i])
		if i == 0 {
			t.Logf("one cluster: %d bytes, its metadata %d bytes and %d values", len(clusters[i]), mdBytes, v)
			if v > xdsclient.MaxClusterValues/16 || mdBytes > xdsclient.MaxMetadataBytes/4 {
				t.Errorf("the largest policy is %d values and %d bytes: too close to the bounds %d and %d", v, mdBytes, xdsclient.MaxClusterValues, xdsclient.MaxMetadataBytes)
			}
		}
	}
	t.Logf("%d clusters: %d bytes, %d metadata values", n, size, values)
	if values > xdsclient.MaxResponseValues/2 {
		t.Errorf("%d values in %d policies: too close to the bound %d", values, n, xdsclient.MaxResponseValues)
	}
	got, err := xdsclient.DecodeClusters(clusters)
	if err != nil || got != n {
		t.Fatalf("decoded %d policies, %v; want %d", got, err, n)
	}
}

// TestLongestListsWithinBounds: a policy whose retryOn and failOn name
// every status code, class and gRPC code there is, the longest lists a
// policy can hold, decodes within MaxClusterValues and MaxMetadataBytes.
func TestLongestListsWithinBounds(t *testing.T) {
	var all []string
	for code := 100; code <= 599; code++ {
		all = append(all, fmt.Sprint(code))
	}
	all = append(all, "5xx", "gateway-error", "connect-failure", "reset", "timeout")
	all = append(all, policy.GRPCCodeNames[1:]...)
	list := `["` + strings.Join(all, `", "`) + `"]`
	doc := "apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: lists, namespace: shop}\nspec:\n  service: geo\n" +
		"  retries: {attempts: 2, retryOn: " + list + "}\n  circuitBreaker: {failOn: " + list + "}\n"
	pols, err := policy.Decode("lists.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	res, err := envoy.TranslateFor(pols, "shop")
	if err != nil || len(res.Clusters) != 1 {
		t.Fatalf("%v, %d clusters", err, len(res.Clusters))
	}
	b, err := proto.Marshal(res.Clusters[0])
	if err != nil {
		t.Fatal(err)
	}
	v, mdBytes, err := xdsclient.MetadataValues(b)
	t.Logf("cluster %d bytes, its metadata %d bytes and %d values", len(b), mdBytes, v)
	if err != nil || v > xdsclient.MaxClusterValues/2 || mdBytes > xdsclient.MaxMetadataBytes/2 {
		t.Fatalf("%d values and %d bytes (%v): too close to the bounds %d and %d", v, mdBytes, err, xdsclient.MaxClusterValues, xdsclient.MaxMetadataBytes)
	}
	if got, err := xdsclient.DecodeClusters([][]byte{b}); err != nil || got != 1 {
		t.Fatalf("decoded %d policies, %v", got, err)
	}
}

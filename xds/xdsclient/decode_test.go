package xdsclient

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestDecodeRefusesShared: every policy of a CDS response reaches the
// sidecar, or the response is refused naming why. "geo" (any port) and
// "geo:80" in clusters of their own both come back; a cluster name twice,
// or two clusters for one service, are a NACK, not a policy dropped by the
// table (policy.NewTable keeps the first of a service).
func TestDecodeRefusesShared(t *testing.T) {
	c := func(name, service string, failures int) resource {
		md, err := structpb.NewStruct(map[string]any{"policy": "p", "spec": map[string]any{
			"service": service, "circuitBreaker": map[string]any{"consecutiveFailures": failures}}})
		if err != nil {
			t.Fatal(err)
		}
		b, err := proto.Marshal(&clusterv3.Cluster{Name: name, Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: md}}})
		if err != nil {
			t.Fatal(err)
		}
		return resource{typeURL: clusterType, value: b}
	}
	for _, tt := range []struct {
		name      string
		resources []resource
		services  []string // the policies decoded, when no error
		err       string
	}{
		{"any port and port 80", []resource{
			c("outbound|0||geo.shop.svc.cluster.local", "geo", 7),
			c("outbound|80||geo.shop.svc.cluster.local", "geo:80", 3),
			c("outbound|8080||geo.shop.svc.cluster.local", "geo:8080", 5),
		}, []string{"geo", "geo:80", "geo:8080"}, ""},
		{"a name twice", []resource{
			c("outbound|80||geo.shop.svc.cluster.local", "geo", 7),
			c("outbound|80||geo.shop.svc.cluster.local", "geo:80", 3),
		}, nil, `cluster "outbound|80||geo.shop.svc.cluster.local": twice`},
		{"a service twice", []resource{
			c("outbound|0||geo.shop.svc.cluster.local", "geo", 7),
			c("other", "geo", 3),
		}, nil, `clusters "outbound|0||geo.shop.svc.cluster.local" and "other": both carry a policy for service "geo"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pols, _, err := decode(tt.resources)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range pols {
				got = append(got, p.Spec.Service)
			}
			if strings.Join(got, " ") != strings.Join(tt.services, " ") {
				t.Fatalf("decoded %v, want %v", got, tt.services)
			}
		})
	}
}

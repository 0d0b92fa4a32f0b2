package xdsclient

import (
	"context"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/policy"
)

// records keeps the log records of a test.
type records struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

// warned is the "field" attribute of every WARN record.
func (r *records) warned() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range r.recs {
		if rec.Level != slog.LevelWarn {
			continue
		}
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "field" {
				out = append(out, a.Value.String())
			}
			return true
		})
	}
	return out
}

func specResource(t *testing.T, name string, spec map[string]any) resource {
	t.Helper()
	md, err := structpb.NewStruct(map[string]any{"policy": "geo", "namespace": "shop", "spec": spec})
	if err != nil {
		t.Fatal(err)
	}
	return resource{clusterType, marshal(t, &clusterv3.Cluster{Name: name,
		Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: md}}})}
}

// TestUnknownFieldTolerated: a spec field the sidecar does not know (a
// newer controller's) is left out, the policy's known fields apply and
// the response is ACKed; each field is logged once at WARN, not at every
// push. A field the sidecar knows with a bad value still refuses.
func TestUnknownFieldTolerated(t *testing.T) {
	newer := func(name, service string) resource {
		return specResource(t, name, map[string]any{"service": service, "timeout": "3s",
			"hedging":        map[string]any{"delay": "50ms"},
			"circuitBreaker": map[string]any{"consecutiveFailures": 7.0, "slowCallRate": 0.5}})
	}
	for _, tt := range []struct {
		name      string
		resources []resource
		failures  []int    // consecutiveFailures of each policy applied
		unknown   []string // the fields left out
		err       bool
	}{
		{"unknown fields", []resource{newer("outbound|0||geo.shop.svc.cluster.local", "geo")},
			[]int{7}, []string{"spec.hedging", "spec.circuitBreaker.slowCallRate"}, false},
		{"the same fields in two clusters", []resource{newer("a", "geo"), newer("b", "pay")},
			[]int{7, 7}, []string{"spec.hedging", "spec.circuitBreaker.slowCallRate"}, false},
		{"an unknown field beside a bad known one", []resource{specResource(t, "c", map[string]any{"service": "geo", "hedging": true, "timeout": "soon"})},
			nil, nil, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var applied []*policy.ResiliencePolicy
			log := &records{}
			c := &Client{Log: slog.New(log), Apply: func(pols []*policy.ResiliencePolicy, _ string) error {
				applied = pols
				return nil
			}}
			resp := &discoveryResponse{versionInfo: "7", typeURL: clusterType, resources: tt.resources}
			for push := range 3 {
				_, _, err := c.applyClusters(resp)
				if (err != nil) != tt.err {
					t.Fatalf("push %d: %v", push, err)
				}
			}
			if tt.err {
				return
			}
			var failures []int
			for _, p := range applied {
				failures = append(failures, p.Spec.CircuitBreaker.ConsecutiveFailures)
				if p.Spec.Timeout.String() != "3s" {
					t.Errorf("%s: timeout %v, want 3s", p.Source, p.Spec.Timeout)
				}
			}
			if !reflect.DeepEqual(failures, tt.failures) {
				t.Errorf("consecutiveFailures %v, want %v", failures, tt.failures)
			}
			got := log.warned()
			slices.Sort(got)
			want := slices.Clone(tt.unknown)
			slices.Sort(want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("warned of %q over 3 pushes, want %q once each", got, want)
			}
		})
	}
}

// TestFilesStayStrict: the tolerance is the control plane's path only: a
// policy file with the same unknown field is refused.
func TestFilesStayStrict(t *testing.T) {
	doc := []byte("apiVersion: minimesh.io/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: geo}\nspec: {service: geo, hedging: {delay: 50ms}}\n")
	if _, err := policy.Decode("geo.yaml", doc); err == nil {
		t.Fatal("a file with an unknown field decoded")
	}
	pols, unknown, err := policy.DecodeTolerant("geo.yaml", doc)
	if err != nil || len(pols) != 1 || !reflect.DeepEqual(unknown, []string{"spec.hedging"}) {
		t.Fatalf("tolerant: %d policies, unknown %q, %v", len(pols), unknown, err)
	}
}

// TestAppliedVersionIsControlPlanes: Apply and ApplyEndpoints are given
// the version_info the control plane sent (what /debug/config shows and
// the ACK carries), not the client's hash of the resources.
func TestAppliedVersionIsControlPlanes(t *testing.T) {
	var got []string
	c := &Client{Log: slog.New(&records{}),
		Apply: func(_ []*policy.ResiliencePolicy, v string) error { got = append(got, "cds "+v); return nil },
		ApplyEndpoints: func(_ map[string][]Endpoint, v string) error {
			got = append(got, "eds "+v)
			return nil
		}}
	cds := &discoveryResponse{versionInfo: "cds-41", typeURL: clusterType,
		resources: []resource{specResource(t, "g", map[string]any{"service": "geo"})}}
	eds := &discoveryResponse{versionInfo: "eds-9", typeURL: endpointType,
		resources: []resource{{endpointType, marshal(t, LoadAssignment(geo, nil))}}}
	hash1, _, err1 := c.applyClusters(cds)
	hash2, _, err2 := c.applyEndpoints(eds)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if want := []string{"cds cds-41", "eds eds-9"}; !reflect.DeepEqual(got, want) {
		t.Errorf("applied versions %q, want %q", got, want)
	}
	if hash1 == "" || hash1 == "cds-41" || hash2 == "" || hash2 == "eds-9" {
		t.Errorf("content hashes %q %q: want the client's own, for NACK dedup", hash1, hash2)
	}
}

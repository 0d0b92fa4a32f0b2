package xdsclient

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/minimesh/minimesh/policy"
)

// partialCluster is a cluster carrying spec in its minimesh metadata; a
// nil spec is a cluster with no minimesh metadata at all.
func partialCluster(t *testing.T, name string, spec map[string]any) *clusterv3.Cluster {
	t.Helper()
	if spec == nil {
		return &clusterv3.Cluster{Name: name}
	}
	md, err := structpb.NewStruct(map[string]any{"policy": "p", "namespace": "shop", "spec": spec})
	if err != nil {
		t.Fatal(err)
	}
	return &clusterv3.Cluster{Name: name, Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataKey: md}}}
}

// partialState is what a test client was given: each Apply, each
// Refused.
type partialState struct {
	mu       sync.Mutex
	applied  []map[string]int // per Apply, service → consecutiveFailures
	versions []string
	refused  []string
}

func (s *partialState) apply(pols []*policy.ResiliencePolicy, version string) error {
	m := map[string]int{}
	for _, p := range pols {
		m[p.Spec.Service] = p.Spec.CircuitBreaker.ConsecutiveFailures
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applied = append(s.applied, m)
	s.versions = append(s.versions, version)
	return nil
}

func (s *partialState) snapshot() (applies int, last map[string]int, version string, refused []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.applied); n > 0 {
		last, version = s.applied[n-1], s.versions[n-1]
	}
	return len(s.applied), last, version, append([]string(nil), s.refused...)
}

// logged counts the records whose message starts with prefix.
func (r *records) logged(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.recs {
		if strings.HasPrefix(rec.Message, prefix) {
			n++
		}
	}
	return n
}

// TestPartialCDS: a CDS response with a cluster the sidecar cannot take
// (a newer controller's retryOn condition, a bad value, a bound, no
// metadata) is applied without it, as Envoy applies the clusters that
// validate: the others' policies are current, the refused cluster's
// service keeps the policy it had (or has none), and the response is
// NACKed with the last version ACKed and an error naming the cluster. The
// same content again is refused again (after the NACK backoff) without
// being applied, reported or logged again; the fixed response is ACKed
// and applied whole. What concerns the whole response (a name twice)
// still refuses all of it. Before, every refusal was of the whole
// response, and one policy's value left every other service's stale.
func TestPartialCDS(t *testing.T) {
	const (
		geoName    = "outbound|0||geo.shop.svc.cluster.local"
		geo80Name  = "outbound|80||geo.shop.svc.cluster.local"
		payName    = "outbound|0||pay.shop.svc.cluster.local"
		webName    = "outbound|0||web.shop.svc.cluster.local"
		searchName = "outbound|0||search.shop.svc.cluster.local"
	)
	spec := func(service string, failures int) map[string]any {
		return map[string]any{"service": service, "circuitBreaker": map[string]any{"consecutiveFailures": failures}}
	}
	with := func(m map[string]any, key string, v any) map[string]any {
		m = maps.Clone(m)
		m[key] = v
		return m
	}
	good := func(name, service string, failures int) *clusterv3.Cluster {
		return partialCluster(t, name, spec(service, failures))
	}
	for _, tt := range []struct {
		name  string
		first []*clusterv3.Cluster // ACKed as v1
		bad   []*clusterv3.Cluster // v2
		want  map[string]int       // in force after v2
		names string               // the cluster the NACK names
		whole bool                 // v2 refused whole: Apply not called
	}{
		{"a retryOn condition of a newer controller: the last good policy stays",
			[]*clusterv3.Cluster{good(geoName, "geo", 3), good(payName, "pay", 4)},
			[]*clusterv3.Cluster{
				partialCluster(t, geoName, with(spec("geo", 9), "retries", map[string]any{"attempts": 2, "retryOn": []any{"5xx", "future-condition"}})),
				good(payName, "pay", 5), good(webName, "web", 6)},
			map[string]int{"geo": 3, "pay": 5, "web": 6}, geoName, false},
		{"a bad value in a known field: the last good policy stays",
			[]*clusterv3.Cluster{good(geoName, "geo", 3), good(payName, "pay", 4)},
			[]*clusterv3.Cluster{partialCluster(t, geoName, with(spec("geo", 9), "timeout", "soon")), good(payName, "pay", 5)},
			map[string]int{"geo": 3, "pay": 5}, geoName, false},
		{"a wider bound, no earlier policy: none",
			[]*clusterv3.Cluster{good(payName, "pay", 4)},
			[]*clusterv3.Cluster{
				partialCluster(t, searchName, with(spec("search", 9), "retries", map[string]any{"attempts": 20})),
				good(payName, "pay", 5)},
			map[string]int{"pay": 5}, searchName, false},
		{"no metadata: the last good policy stays",
			[]*clusterv3.Cluster{good(geoName, "geo", 3), good(payName, "pay", 4)},
			[]*clusterv3.Cluster{partialCluster(t, geoName, nil), good(payName, "pay", 5)},
			map[string]int{"geo": 3, "pay": 5}, geoName, false},
		{"the refused cluster's service carried by another: that one's",
			[]*clusterv3.Cluster{good(geoName, "geo", 3), good(payName, "pay", 4)},
			[]*clusterv3.Cluster{partialCluster(t, geoName, with(spec("geo", 9), "timeout", "soon")), good(geo80Name, "geo", 7)},
			map[string]int{"geo": 7}, geoName, false},
		{"a name twice beside a bad cluster: refused whole",
			[]*clusterv3.Cluster{good(geoName, "geo", 3), good(payName, "pay", 4)},
			[]*clusterv3.Cluster{partialCluster(t, geoName, with(spec("geo", 9), "timeout", "soon")), good(payName, "pay", 5), good(payName, "pay", 5)},
			map[string]int{"geo": 3, "pay": 4}, payName, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, addr, stop := startFake(t)
			defer stop()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st := &partialState{}
			log := &records{}
			c := &Client{Addr: addr, Node: Node("p", "shop", "web"), Log: slog.New(log), Apply: st.apply,
				Refused: func(what string, err error) {
					st.mu.Lock()
					st.refused = append(st.refused, what+": "+err.Error())
					st.mu.Unlock()
				}}
			done := make(chan struct{})
			go func() { c.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			f.next(t, clusterType)

			f.out <- &discovery.DiscoveryResponse{TypeUrl: clusterType, VersionInfo: "v1", Nonce: "1", Resources: anys(t, protos(tt.first)...)}
			if ack := f.next(t, clusterType); ack.GetErrorDetail() != nil || ack.GetVersionInfo() != "v1" {
				t.Fatalf("v1: %v, want an ACK", ack)
			}

			bad := &discovery.DiscoveryResponse{TypeUrl: clusterType, VersionInfo: "v2", Nonce: "2", Resources: anys(t, protos(tt.bad)...)}
			f.out <- bad
			nack := f.next(t, clusterType)
			msg := nack.GetErrorDetail().GetMessage()
			if nack.GetErrorDetail() == nil || nack.GetVersionInfo() != "v1" || nack.GetResponseNonce() != "2" ||
				!strings.Contains(msg, fmt.Sprintf("%q", tt.names)) && !strings.Contains(msg, "cluster "+tt.names) {
				t.Fatalf("v2: %v\nwant a NACK of nonce 2 with the last version ACKed (v1), naming %s", nack, tt.names)
			}
			applies, last, version, refused := st.snapshot()
			wantApplies, wantVersion := 2, "v2"
			if tt.whole {
				wantApplies, wantVersion = 1, "v1"
			}
			if applies != wantApplies || version != wantVersion || !maps.Equal(last, tt.want) {
				t.Fatalf("after v2: %d applies, the last %v of %q; want %d, %v of %q", applies, last, version, wantApplies, tt.want, wantVersion)
			}
			if len(refused) != 1 || !strings.Contains(refused[0], tt.names) || strings.Contains(refused[0], "(partial: ") == tt.whole {
				t.Fatalf("reported refused: %q; want one naming %s (partial: %v)", refused, tt.names, !tt.whole)
			}
			partialLine := "xds: applied the control plane's policies in part"
			if n := log.logged(partialLine); n != map[bool]int{false: 1, true: 0}[tt.whole] {
				t.Fatalf("%d %q lines after v2", n, partialLine)
			}
			errorLines := log.logged("xds: ")

			// The same content again (a control plane answering the NACK
			// with it): NACKed again once the backoff passed, and nothing
			// else.
			bad.Nonce = "3"
			f.out <- bad
			if again := f.next(t, clusterType); again.GetErrorDetail().GetMessage() != msg || again.GetVersionInfo() != "v1" || again.GetResponseNonce() != "3" {
				t.Fatalf("the same content again: %v, want the same NACK", again)
			}
			if n, _, _, r := st.snapshot(); n != applies || len(r) != 1 || log.logged("xds: ") != errorLines {
				t.Fatalf("the same content again: %d applies (want %d), %d reports (want 1), %d log lines (want %d)",
					n, applies, len(r), log.logged("xds: "), errorLines)
			}

			// Fixed: ACKed and applied whole.
			f.out <- &discovery.DiscoveryResponse{TypeUrl: clusterType, VersionInfo: "v3", Nonce: "4",
				Resources: anys(t, good(geoName, "geo", 8), good(payName, "pay", 5))}
			if ack := f.next(t, clusterType); ack.GetErrorDetail() != nil || ack.GetVersionInfo() != "v3" {
				t.Fatalf("v3: %v, want an ACK", ack)
			}
			if _, last, version, _ := st.snapshot(); version != "v3" || !maps.Equal(last, map[string]int{"geo": 8, "pay": 5}) {
				t.Fatalf("v3: %v of %q, want geo 8 and pay 5 of v3", last, version)
			}
		})
	}
}

// TestPartialManyRefused: more clusters refused than a NACK lists are
// all decoded, and the others applied; the NACK lists maxDecodeErrors
// and counts the rest.
func TestPartialManyRefused(t *testing.T) {
	var rs []resource
	for i := range maxDecodeErrors + 10 {
		rs = append(rs, specResource(t, fmt.Sprintf("bad%d", i), map[string]any{"service": fmt.Sprintf("s%d", i), "timeout": "soon"}))
	}
	rs = append(rs, specResource(t, "good", map[string]any{"service": "geo"}))
	pols, _, err := decode(rs)
	if len(pols) != 1 || pols[0].Spec.Service != "geo" {
		t.Fatalf("decoded %d policies, want geo's", len(pols))
	}
	if err == nil || !strings.Contains(err.Error(), "10 more clusters refused") || strings.Count(err.Error(), "spec.timeout") != maxDecodeErrors {
		t.Fatalf("err %.300v", err)
	}
}

func protos(cs []*clusterv3.Cluster) []proto.Message {
	out := make([]proto.Message, len(cs))
	for i, c := range cs {
		out[i] = c
	}
	return out
}

// TestPartialNackKeepsSummary: a partial apply's NACK, cut to
// MaxNackMessage, still ends saying the rest was applied.
func TestPartialNackKeepsSummary(t *testing.T) {
	for _, n := range []int{1, 10 * MaxNackMessage} {
		pe := &partialError{leftOut: 1, total: 3, err: fmt.Errorf("cluster %q: %s", "geo", strings.Repeat("ü", n))}
		msg := nackMessage(pe)
		if len(msg) > MaxNackMessage || !strings.HasPrefix(msg, `cluster "geo": ü`) || !strings.HasSuffix(msg, "\n"+pe.summary()) ||
			!strings.Contains(msg, "(partial: 1 of 3 clusters") || (n > 1) != strings.Contains(msg, "more bytes cut of") {
			t.Errorf("%d bytes of error: NACK of %d bytes %.60q … %q", n, len(msg), msg, msg[max(0, len(msg)-160):])
		}
	}
}

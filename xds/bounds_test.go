package xds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestRequestBounds: what one client can make the server hold is bounded
// per stream, and streams per peer address. Before, one stream that sent
// requests of made-up type URLs got a watch kept for each (200 requests
// with a 1 MB node: 208 MB of the controller's heap, and every publish
// to the namespace walked every watch); a delta stream's subscriptions
// added up without end; and one peer could open streams without end.
func TestRequestBounds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewServer(ctx, nil)
	s.MaxStreamsPerPeer = 4
	s.capLoopback = true // the test's clients are on loopback
	if err := s.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	conn := rawConn(t, addr)
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	stream := func() discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		sctx, end := context.WithTimeout(ctx, 10*time.Second)
		t.Cleanup(end)
		st, err := ads.StreamAggregatedResources(sctx)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	refused := func(what string, st interface {
		Recv() (*discovery.DiscoveryResponse, error)
	}, want codes.Code) {
		t.Helper()
		for {
			_, err := st.Recv()
			if err == nil {
				continue // answers to the requests before the refused one
			}
			if status.Code(err) != want {
				t.Fatalf("%s: %v, want %s", what, err, want)
			}
			return
		}
	}

	// Made-up types: refused at the first, with no watch left behind.
	st := stream()
	for i := 0; i < 50; i++ {
		if err := st.Send(&discovery.DiscoveryRequest{Node: typedNode("p", "shop", "web"), TypeUrl: fmt.Sprintf("type.googleapis.com/x.T%d", i)}); err != nil {
			break
		}
	}
	refused("a type that is no xDS type", st, codes.InvalidArgument)
	waitFor(t, "no watch left", func() bool {
		return s.Cache.GetStatusInfo("shop") == nil || s.Cache.GetStatusInfo("shop").GetNumWatches() == 0
	})

	// A node of a megabyte.
	big := typedNode("p", "shop", "web")
	big.Metadata.Fields["junk"] = structpb.NewStringValue(strings.Repeat("x", 1<<20))
	st = stream()
	if err := st.Send(&discovery.DiscoveryRequest{Node: big, TypeUrl: clusterType}); err != nil {
		t.Fatal(err)
	}
	refused("a request of 1 MB", st, codes.InvalidArgument)

	// Delta subscriptions that add up, 5,000 names a request.
	dctx, dend := context.WithTimeout(ctx, 10*time.Second)
	defer dend()
	delta, err := ads.DeltaAggregatedResources(dctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < MaxDeltaNames/5000+1; i++ {
		names := make([]string, 5000)
		for j := range names {
			names[j] = fmt.Sprintf("svc-%d-%d.shop.svc.cluster.local:80", i, j)
		}
		if err := delta.Send(&discovery.DeltaDiscoveryRequest{Node: typedNode("p", "shop", "web"), TypeUrl: endpointType, ResourceNamesSubscribe: names}); err != nil {
			break
		}
	}
	for {
		_, err := delta.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("delta subscriptions past %d names: %v, want InvalidArgument", MaxDeltaNames, err)
		}
		break
	}

	// Streams from one address: the fifth is refused, and its place is
	// free again once one closes.
	waitFor(t, "the refused streams closed", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.peerOf) == 0
	})
	var open []context.CancelFunc
	for i := 0; i < 4; i++ {
		sctx, end := context.WithCancel(ctx)
		open = append(open, end)
		st, err := ads.StreamAggregatedResources(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discovery.DiscoveryRequest{Node: typedNode("p", "shop", "web"), TypeUrl: clusterType}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
	}
	st = stream()
	// Refused as it opens, the stream may end before the request is
	// sent: Send then says io.EOF, and Recv has the status.
	if err := st.Send(&discovery.DiscoveryRequest{Node: typedNode("p", "shop", "web"), TypeUrl: clusterType}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	refused("a fifth stream from one address", st, codes.ResourceExhausted)
	open[0]()
	waitFor(t, "a place free again", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.peerOf) == 3
	})
	st = stream()
	if err := st.Send(&discovery.DiscoveryRequest{Node: typedNode("p", "shop", "web"), TypeUrl: clusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatalf("a stream after one closed: %v", err)
	}
	for _, end := range open[1:] {
		end()
	}
}

// TestNackLogBounded: a NACK's log line repeats at most 100 bytes of
// each value the client sent (a client could send a megabyte of reason
// or node id in every request, and the controller wrote each into its
// log); delta streams count as sidecars, and their NACKs are counted and
// logged too.
func TestNackLogBounded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logged safeBuffer
	reg := prometheus.NewRegistry()
	s := NewServer(ctx, Callbacks(slog.New(slog.NewTextHandler(&logged, nil)), reg))
	if err := s.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	ads := discovery.NewAggregatedDiscoveryServiceClient(rawConn(t, addr))
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := typedNode(strings.Repeat("n", 100<<10), "shop", "web")
	if err := st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: clusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: clusterType, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Message: strings.Repeat("r", 100<<10)}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the NACK counted", func() bool { return gauge(t, reg, "minimesh_xds_nacks_total") == 1 })
	if n := logged.Len(); n > 2000 {
		t.Fatalf("one NACK logged in %d bytes", n)
	}
	if !strings.Contains(logged.String(), "nonce="+resp.GetNonce()) {
		t.Errorf("the NACK's log line does not name the refused response's nonce: %s", logged.String())
	}

	delta, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discovery.DeltaDiscoveryRequest{Node: typedNode("p", "shop", "web"), TypeUrl: clusterType}); err != nil {
		t.Fatal(err)
	}
	dresp, err := delta.Recv()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two streams in the gauge", func() bool { return gauge(t, reg, "minimesh_xds_streams") == 2 })
	if err := delta.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: clusterType, ResponseNonce: dresp.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Message: "refused"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the delta NACK counted", func() bool { return gauge(t, reg, "minimesh_xds_nacks_total") == 2 })
}

type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *safeBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Len()
}

func (b *safeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

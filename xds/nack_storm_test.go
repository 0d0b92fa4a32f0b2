package xds

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// xdsStream is one client stream, state-of-the-world or incremental, as
// a test drives it.
type xdsStream interface {
	first() error // the first request, for every cluster
	recv() (version, nonce string, err error)
	nack(nonce, accepted string) error // accepted: the last version ACKed
	ack(nonce, version string) error
}

type sotwStream struct {
	st interface {
		Send(*discovery.DiscoveryRequest) error
		Recv() (*discovery.DiscoveryResponse, error)
	}
}

func (c sotwStream) first() error {
	return c.st.Send(&discovery.DiscoveryRequest{Node: typedNode("envoy-1", "shop", "web"), TypeUrl: clusterType})
}

func (c sotwStream) recv() (string, string, error) {
	r, err := c.st.Recv()
	return r.GetVersionInfo(), r.GetNonce(), err
}

func (c sotwStream) nack(nonce, accepted string) error {
	return c.st.Send(&discovery.DiscoveryRequest{TypeUrl: clusterType, VersionInfo: accepted, ResponseNonce: nonce,
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "refused by the test"}})
}

func (c sotwStream) ack(nonce, version string) error {
	return c.st.Send(&discovery.DiscoveryRequest{TypeUrl: clusterType, VersionInfo: version, ResponseNonce: nonce})
}

type deltaStream struct {
	st discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func (c deltaStream) first() error {
	return c.st.Send(&discovery.DeltaDiscoveryRequest{Node: typedNode("envoy-1", "shop", "web"), TypeUrl: clusterType})
}

func (c deltaStream) recv() (string, string, error) {
	r, err := c.st.Recv()
	return r.GetSystemVersionInfo(), r.GetNonce(), err
}

func (c deltaStream) nack(nonce, _ string) error {
	return c.st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: clusterType, ResponseNonce: nonce,
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "refused by the test"}})
}

func (c deltaStream) ack(nonce, _ string) error {
	return c.st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: clusterType, ResponseNonce: nonce})
}

// openADS, openCDS and openDelta open a stream of each kind a sidecar or
// an Envoy may use, ended with ctx.
func openADS(ctx context.Context, t *testing.T, addr string) xdsStream {
	t.Helper()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(rawConn(t, addr)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return sotwStream{st}
}

func openCDS(ctx context.Context, t *testing.T, addr string) xdsStream {
	t.Helper()
	st, err := clusterservice.NewClusterDiscoveryServiceClient(rawConn(t, addr)).StreamClusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return sotwStream{st}
}

func openDelta(ctx context.Context, t *testing.T, addr string) xdsStream {
	t.Helper()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(rawConn(t, addr)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return deltaStream{st}
}

// TestNackHeldUntilChange: a client that NACKs every response as soon as
// it comes, and NACKs it again and again (as an Envoy does: it NACKs
// each response it cannot take, and nothing makes it wait), is sent
// each version once: the next response is the next version, once the
// policies change, which it can ACK. The log has a line for each
// version refused and one saying how often it was refused again, not a
// line per NACK; the metric counts every NACK. Before, the server
// answered each NACK with the version refused, at once (8,217 responses
// and as many log lines in a second on one stream).
func TestNackHeldUntilChange(t *testing.T) {
	const versions, nacksEach = 3, 5
	for _, tc := range []struct {
		name string
		open func(ctx context.Context, t *testing.T, addr string) xdsStream
	}{
		{"ads", openADS},
		{"cds", openCDS},
		{"delta", openDelta},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var logged safeBuffer
			reg := prometheus.NewRegistry()
			s := NewServer(ctx, Callbacks(slog.New(slog.NewTextHandler(&logged, nil)), reg))
			breaker := func(n int) error {
				return s.SetNamespace("shop", pol(t, "shop", fmt.Sprintf("{service: geo, circuitBreaker: {consecutiveFailures: %d}}", n)))
			}
			if err := breaker(1); err != nil {
				t.Fatal(err)
			}
			addr, stop := serve(t, s, "127.0.0.1:0")
			defer stop()
			sctx, end := context.WithTimeout(ctx, 10*time.Second)
			defer end()
			c := tc.open(sctx, t, addr)
			if err := c.first(); err != nil {
				t.Fatal(err)
			}
			// The clusters' version, as the server sends it now.
			current := func() string {
				v, _, _ := strings.Cut(s.Version("shop"), ".")
				return v
			}
			nacks := 0
			for i := 1; i <= versions; i++ {
				v, nonce, err := c.recv()
				if err != nil {
					t.Fatal(err)
				}
				if want := current(); v != want {
					t.Fatalf("response %d: version %q, want the current %q: the version refused was sent again", i, v, want)
				}
				for range nacksEach {
					if err := c.nack(nonce, ""); err != nil {
						t.Fatal(err)
					}
					nacks++
				}
				waitFor(t, "the NACKs counted", func() bool { return gauge(t, reg, "minimesh_xds_nacks_total") == float64(nacks) })
				if err := breaker(i + 1); err != nil {
					t.Fatal(err)
				}
			}
			v, nonce, err := c.recv()
			if err != nil {
				t.Fatal(err)
			}
			if want := current(); v != want {
				t.Fatalf("after the last change: version %q, want %q", v, want)
			}
			if err := c.ack(nonce, v); err != nil {
				t.Fatal(err)
			}
			end() // the last version's repeats are logged as the stream closes
			waitFor(t, "the stream closed", func() bool { return gauge(t, reg, "minimesh_xds_streams") == 0 })

			if got := gauge(t, reg, "minimesh_xds_nacks_total"); got != float64(nacks) {
				t.Errorf("minimesh_xds_nacks_total = %v, want every NACK: %d", got, nacks)
			}
			out := logged.String()
			refused := strings.Count(out, "a sidecar refused its policies (NACK)")
			repeated := strings.Count(out, "a sidecar repeated its NACK")
			if refused != versions || repeated != versions || strings.Count(out, fmt.Sprintf("times=%d", nacksEach-1)) != versions {
				t.Errorf("%d NACKs of %d versions: %d lines of a refusal and %d of repeats, want %d of each (the repeats counted):\n%s",
					nacks, versions, refused, repeated, versions, out)
			}
		})
	}
}

// TestRefusedStreamsLeaveGauge: streams refused at their opening (past
// MaxStreamsPerPeer) leave minimesh_xds_streams at the streams open.
// Before, go-control-plane's close of each refused stream counted it
// down without its opening having counted it up: one stream open and
// five refused read -4.
func TestRefusedStreamsLeaveGauge(t *testing.T) {
	const refusals = 5
	for _, tc := range []struct {
		name string
		open func(ctx context.Context, t *testing.T, addr string) xdsStream
	}{
		{"ads", openADS},
		{"delta", openDelta},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			reg := prometheus.NewRegistry()
			s := NewServer(ctx, Callbacks(slog.New(slog.DiscardHandler), reg))
			s.MaxStreamsPerPeer = 1
			s.capLoopback = true // the test's clients are on loopback
			if err := s.SetNamespace("shop", pol(t, "shop", `{service: geo}`)); err != nil {
				t.Fatal(err)
			}
			addr, stop := serve(t, s, "127.0.0.1:0")
			defer stop()
			sctx, end := context.WithTimeout(ctx, 10*time.Second)
			defer end()
			open := tc.open(sctx, t, addr)
			if err := open.first(); err != nil {
				t.Fatal(err)
			}
			if _, _, err := open.recv(); err != nil {
				t.Fatal(err)
			}
			for i := range refusals {
				c := tc.open(sctx, t, addr)
				c.first() // may fail as the server ends the stream: Recv says why
				// The server has closed the stream (its callbacks too) by the time its status arrives.
				if _, _, err := c.recv(); status.Code(err) != codes.ResourceExhausted {
					t.Fatalf("stream %d past the bound: %v, want ResourceExhausted", i+2, err)
				}
			}
			if got := gauge(t, reg, "minimesh_xds_streams"); got != 1 {
				t.Fatalf("minimesh_xds_streams = %v with one stream open and %d refused, want 1", got, refusals)
			}
			end()
			waitFor(t, "the stream closed", func() bool { return gauge(t, reg, "minimesh_xds_streams") == 0 })
		})
	}
}

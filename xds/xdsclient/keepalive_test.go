package xdsclient

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/minimesh/minimesh/internal/blackhole"
	"github.com/minimesh/minimesh/internal/grpcwire"
	"github.com/minimesh/minimesh/policy"
)

// TestKeepaliveReconnects: a control plane gone silent (no reset) is
// noticed by the client's pings and left for a new connection, and the
// policies applied are kept meanwhile. Before, the client sent no ping
// and waited on the dead stream for as long as TCP keepalive took
// (minutes): no new connection came.
func TestKeepaliveReconnects(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeADS{in: make(chan *discovery.DiscoveryRequest, 100), out: make(chan *discovery.DiscoveryResponse)}
	// As the controller: pings on a stream are permitted above MinTime.
	g := grpc.NewServer(grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Millisecond, PermitWithoutStream: true}))
	discovery.RegisterAggregatedDiscoveryServiceServer(g, f)
	go g.Serve(l)
	defer g.Stop()
	bh := blackhole.New(t, l.Addr().String())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &state{}
	c := &Client{Addr: bh.Addr(), Node: Node("p", "shop", "web"), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Apply: func(p []*policy.ResiliencePolicy, _ string) error {
			st.mu.Lock()
			st.pols = p
			st.n++
			st.mu.Unlock()
			return nil
		},
		Keepalive:  grpcwire.Keepalive{Time: 100 * time.Millisecond, Timeout: 200 * time.Millisecond},
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	f.next(t, clusterType)
	f.out <- &discovery.DiscoveryResponse{TypeUrl: clusterType, VersionInfo: "c1", Nonce: "1", Resources: anys(t, geoCluster(t, 3))}
	if ack := f.next(t, clusterType); ack.GetVersionInfo() != "c1" {
		t.Fatalf("ACK %v", ack)
	}
	bh.Hole()
	start := time.Now()
	req := f.next(t, clusterType) // the new stream's first request, within 10 s
	if req.GetResponseNonce() != "" || bh.Accepted() != 2 {
		t.Fatalf("request %v on connection %d; want a new stream's first on a second connection", req, bh.Accepted())
	}
	t.Logf("reconnected %v after the control plane went silent", time.Since(start))
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.n != 1 || len(st.pols) != 1 || st.pols[0].Spec.CircuitBreaker.ConsecutiveFailures != 3 {
		t.Fatalf("policies %v after %d applies; want the last good ones kept", st.pols, st.n)
	}
}

// TestDefaultKeepalive: the figures the server's EnforcementPolicy is
// set against (docs/controlplane.md): a dead control plane noticed within
// a minute, pings at least 10 s apart.
func TestDefaultKeepalive(t *testing.T) {
	k := DefaultKeepalive
	if k.Time < 10*time.Second || k.Time+k.Timeout > 60*time.Second || k.Timeout <= 0 {
		t.Fatalf("DefaultKeepalive %+v", k)
	}
}

// TestNackMessage: a NACK's message is at most MaxNackMessage bytes of
// valid UTF-8, cut at a character boundary, and says how much was cut.
func TestNackMessage(t *testing.T) {
	if got := nackMessage(fmt.Errorf("short: %s", "é")); got != "short: é" {
		t.Fatalf("a short message changed: %q", got)
	}
	if got := nackMessage(fmt.Errorf("bad \xff byte")); got != "bad \uFFFD byte" {
		t.Fatalf("invalid UTF-8: %q", got)
	}
	for _, r := range []string{"x", "é", "€", "𝄞"} {
		for pad := range 4 {
			long := strings.Repeat("a", pad) + strings.Repeat(r, 3*MaxNackMessage)
			got := nackMessage(fmt.Errorf("%s", long))
			if len(got) > MaxNackMessage || !utf8.ValidString(got) {
				t.Fatalf("%q×, pad %d: %d bytes, valid %v", r, pad, len(got), utf8.ValidString(got))
			}
			head, note, ok := strings.Cut(got, " … (")
			var cut, of int
			if _, err := fmt.Sscanf(note, "%d more bytes cut of %d)", &cut, &of); !ok || err != nil {
				t.Fatalf("note %q: %v", note, err)
			}
			if of != len(long) || len(head)+cut != len(long) || !strings.HasPrefix(long, head) || len(got) < MaxNackMessage-8 {
				t.Fatalf("%q×, pad %d: kept %d, cut %d of %d", r, pad, len(head), cut, len(long))
			}
		}
	}
}

// TestNackBounded: a response whose every cluster is refused is NACKed
// with a message of at most MaxNackMessage bytes (the server refuses a
// request over 256 KiB and ends the stream), and Refused hears the same.
// Before, the NACK joined every cluster's error: here 600 KB.
func TestNackBounded(t *testing.T) {
	f, addr, stop := startFake(t)
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var refused []string
	c := &Client{Addr: addr, Node: Node("p", "shop", "web"), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Apply: func([]*policy.ResiliencePolicy, string) error { return nil },
		Refused: func(_ string, err error) {
			mu.Lock()
			refused = append(refused, err.Error())
			mu.Unlock()
		}}
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	f.next(t, clusterType)
	var bad []*clusterv3.Cluster
	for i := range 3000 {
		bad = append(bad, &clusterv3.Cluster{Name: "outbound|80||säo-" + strconv.Itoa(i) + strings.Repeat("ü", 80) + ".shop.svc.cluster.local"})
	}
	resp := &discovery.DiscoveryResponse{TypeUrl: clusterType, VersionInfo: "c1", Nonce: "1"}
	for _, b := range bad {
		resp.Resources = append(resp.Resources, anys(t, b)...)
	}
	f.out <- resp
	nack := f.next(t, clusterType)
	msg := nack.GetErrorDetail().GetMessage()
	if nack.GetErrorDetail() == nil || len(msg) > MaxNackMessage || !utf8.ValidString(msg) ||
		!strings.HasPrefix(msg, "cluster outbound|80||säo-0ü") || !strings.Contains(msg, "more bytes cut of ") {
		t.Fatalf("NACK of %d bytes: %.200q … %q", len(msg), msg, msg[max(0, len(msg)-80):])
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refused) != 1 || refused[0] != msg {
		t.Fatalf("Refused heard %d refusals, the first not the NACK's message", len(refused))
	}
}

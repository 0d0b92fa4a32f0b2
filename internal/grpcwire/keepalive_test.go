package grpcwire

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/blackhole"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
)

// TestKeepaliveEndsDeadStream: a stream whose server goes silent (no
// reset, no FIN) ends within the keepalive's time and timeout of its
// last frame, as an error, rather than waiting for TCP keepalive's
// minutes. Before, nothing was pinged and Recv waited for ever.
func TestKeepaliveEndsDeadStream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The server permits the pings (grpc-go's default policy would end
	// the connection with GOAWAY too_many_pings at the third).
	g := grpc.NewServer(grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Millisecond, PermitWithoutStream: true}))
	h := health.NewServer()
	healthpb.RegisterHealthServer(g, h)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	h.SetServingStatus("geo", healthpb.HealthCheckResponse_SERVING)
	bh := blackhole.New(t, ln.Addr().String())

	k := Keepalive{Time: 100 * time.Millisecond, Timeout: 200 * time.Millisecond}
	c := NewKeepaliveClient(time.Second, k)
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := NewStream(ctx, c, bh.Addr(), "/grpc.health.v1.Health/Watch")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	req, _ := proto.Marshal(&healthpb.HealthCheckRequest{Service: "geo"})
	if err := s.Send(req); err != nil {
		t.Fatal(err)
	}
	s.CloseSend()
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	// Pinged and answered for a while, the stream still carries messages.
	time.Sleep(5 * k.Time)
	h.SetServingStatus("geo", healthpb.HealthCheckResponse_NOT_SERVING)
	if _, err := s.Recv(); err != nil {
		t.Fatalf("a live stream, pinged: %v", err)
	}

	bh.Hole()
	start := time.Now()
	_, err = s.Recv()
	d := time.Since(start)
	if err == nil {
		t.Fatal("a message through the hole")
	}
	if ctx.Err() != nil {
		t.Fatalf("the stream ended only with its context (%v after %v): no keepalive", err, d)
	}
	if e, ok := err.(*Error); !ok || e.Code != 14 {
		t.Errorf("err %#v, want Unavailable", err)
	}
	t.Logf("dead server noticed after %v: %v", d, err)
}

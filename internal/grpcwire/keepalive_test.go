package grpcwire

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
)

// blackhole is a TCP proxy to a server that can stop forwarding without
// closing anything: what a client sees of a server whose node was lost,
// or behind a network that drops its packets. Nothing answers, nothing
// resets.
type blackhole struct {
	ln    net.Listener
	to    string
	mu    sync.Mutex
	holed bool
	wake  chan struct{} // closed by hole
	conns []net.Conn
	n     int // connections accepted
}

func newBlackhole(t *testing.T, to string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, to: to, wake: make(chan struct{})}
	go b.run()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.conns {
			c.Close()
		}
	})
	return b
}

func (b *blackhole) addr() string { return b.ln.Addr().String() }

func (b *blackhole) run() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", b.to)
		if err != nil {
			c.Close()
			continue
		}
		b.mu.Lock()
		b.conns = append(b.conns, c, s)
		b.n++
		b.mu.Unlock()
		go b.pipe(c, s)
		go b.pipe(s, c)
	}
}

// pipe copies from src to dst until the hole opens; then it holds both
// open and silent.
func (b *blackhole) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-b.wake:
			return // what was read falls into the hole; the sockets stay open
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if tc, ok := dst.(*net.TCPConn); ok && err == io.EOF {
				tc.CloseWrite()
			}
			return
		}
	}
}

// hole stops forwarding on every connection, open or to come.
func (b *blackhole) hole() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.holed {
		b.holed = true
		close(b.wake)
	}
}

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
	bh := newBlackhole(t, ln.Addr().String())

	k := Keepalive{Time: 100 * time.Millisecond, Timeout: 200 * time.Millisecond}
	c := NewKeepaliveClient(time.Second, k)
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := NewStream(ctx, c, bh.addr(), "/grpc.health.v1.Health/Watch")
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

	bh.hole()
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

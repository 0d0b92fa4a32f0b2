package outbound_test

// An upstream that refuses a stream without processing it (RFC 9113
// §8.7: a GOAWAY whose last stream ID is below it) leaves the request
// safe to send again, whatever its method; Go's HTTP/2 transport does so
// itself, but only with Request.GetBody when a body was written.

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcstatus "google.golang.org/grpc/status"
)

// gatedConn is a server's connection whose reads the test can hold: what
// the client sends meanwhile waits in pending, where the test can see it.
type gatedConn struct {
	net.Conn
	mu      sync.Mutex
	cond    sync.Cond
	held    bool
	pending []byte
	err     error
	// out is what the server wrote and goAway whether a GOAWAY frame was
	// among it.
	wmu    sync.Mutex
	out    []byte
	goAway bool
}

// Write follows the server's frames (a 9-byte header: length, type at
// [3]; GOAWAY is 7) after its SETTINGS, the first thing it writes.
func (g *gatedConn) Write(p []byte) (int, error) {
	g.wmu.Lock()
	g.out = append(g.out, p...)
	for len(g.out) >= 9 {
		n := int(g.out[0])<<16 | int(g.out[1])<<8 | int(g.out[2])
		if len(g.out) < 9+n {
			break
		}
		g.goAway = g.goAway || g.out[3] == 0x7
		g.out = g.out[9+n:]
	}
	g.wmu.Unlock()
	return g.Conn.Write(p)
}

func (g *gatedConn) wroteGoAway() bool {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	return g.goAway
}

func newGatedConn(c net.Conn) *gatedConn {
	g := &gatedConn{Conn: c}
	g.cond.L = &g.mu
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			g.mu.Lock()
			g.pending = append(g.pending, buf[:n]...)
			g.err = err
			g.cond.Broadcast()
			g.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return g
}

func (g *gatedConn) Read(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.held || len(g.pending) == 0 && g.err == nil {
		g.cond.Wait()
	}
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return 0, g.err
}

func (g *gatedConn) hold(v bool) {
	g.mu.Lock()
	g.held = v
	g.cond.Broadcast()
	g.mu.Unlock()
}

func (g *gatedConn) holds(b []byte) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return bytes.Contains(g.pending, b)
}

// oneConnListener hands its server one connection, then waits to close.
type oneConnListener struct {
	c    chan net.Conn
	addr net.Addr
	once sync.Once
	done chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.c:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *oneConnListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *oneConnListener) Addr() net.Addr { return l.addr }

// holdingHealth holds Check calls for the service "hold" until release
// is closed, and counts the calls for each service.
type holdingHealth struct {
	healthpb.UnimplementedHealthServer
	held    chan struct{}
	release chan struct{}
	mu      sync.Mutex
	calls   map[string]int
}

func (s *holdingHealth) Check(ctx context.Context, r *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	s.mu.Lock()
	s.calls[r.Service]++
	s.mu.Unlock()
	if r.Service == "hold" {
		s.held <- struct{}{}
		select {
		case <-s.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (s *holdingHealth) count(service string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[service]
}

// TestGRPCGoAwayRefusedStream: a gRPC call the upstream refused unseen
// (net/http's HTTP/2 server, gRPC served by grpc-go's ServeHTTP, shuts
// its connection down gracefully while the call's stream is on its way:
// GOAWAY with the last stream ID below it) goes again on a new
// connection, as RFC 9113 §8.7 allows, when the sidecar holds its body
// for retries: the call succeeds, the upstream runs it once, and no
// failure is counted. Without Request.GetBody, Go's transport gave up
// ("cannot retry ... after Request.Body was written") and the sidecar
// answered UNAVAILABLE reset, a failure that opened the breaker.
func TestGRPCGoAwayRefusedStream(t *testing.T) {
	hs := &holdingHealth{held: make(chan struct{}, 1), release: make(chan struct{}), calls: map[string]int{}}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	type served struct {
		conn *gatedConn
		srv  *http.Server
	}
	conns := make(chan served, 4)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// A server per connection: its Shutdown is a GOAWAY on that
			// connection alone, and the next connection is served anew.
			g := newGatedConn(c)
			srv := &http.Server{Protocols: &p, Handler: gs}
			l := &oneConnListener{c: make(chan net.Conn, 1), addr: ln.Addr(), done: make(chan struct{})}
			l.c <- g
			wg.Add(1)
			go func() { defer wg.Done(); _ = srv.Serve(l) }()
			conns <- served{g, srv}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		close(hs.release)
		for {
			select {
			case s := <-conns:
				s.conn.hold(false)
				s.srv.Close()
				continue
			default:
			}
			break
		}
		gs.Stop()
	})

	sc := startSidecar(t, policyDoc("health", healthSvc, "retries:\n  attempts: 1\n  retryOn: [grpc-unavailable]\ncircuitBreaker:\n  consecutiveFailures: 1\n  openTimeout: 60s\n"),
		resolve(ln.Addr().String(), healthSvc))
	c := grpcClient(t, sc, healthSvc)

	// Call 1 holds the upstream's first connection, stream 1.
	first := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: "hold"})
		first <- err
	}()
	select {
	case <-hs.held:
	case <-time.After(5 * time.Second):
		t.Fatal("the first call did not reach the upstream")
	}
	up := <-conns
	up.conn.hold(true)

	// Call 2's stream goes on the same connection; the server has not
	// read it when it shuts the connection down: GOAWAY, last stream 1.
	const marker = "refused-unseen-7f3a"
	second := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: marker})
		second <- err
	}()
	if !proxytest.Poll(5*time.Second, time.Millisecond, func() bool { return up.conn.holds([]byte(marker)) }) {
		t.Fatal("the second call's stream never reached the upstream's connection")
	}
	sctx, scancel := context.WithCancel(context.Background())
	t.Cleanup(scancel)
	go func() { _ = up.srv.Shutdown(sctx) }()
	// Once the GOAWAY is out, the server ignores the stream it did not
	// read (a stream above the last one it named).
	if !proxytest.Poll(5*time.Second, time.Millisecond, up.conn.wroteGoAway) {
		t.Fatal("no GOAWAY from the upstream's graceful shutdown")
	}
	up.conn.hold(false)

	if err := <-second; err != nil {
		t.Fatalf("the refused call: %v (%v), want it sent again and answered", err, grpcstatus.Code(err))
	}
	if n := hs.count(marker); n != 1 {
		t.Errorf("the upstream ran the refused call %d times, want once", n)
	}
	hs.release <- struct{}{}
	if err := <-first; err != nil && grpcstatus.Code(err) != codes.OK {
		t.Errorf("the first call: %v", err)
	}
	if b := sc.breaker(healthSvc); b.State != "closed" {
		t.Errorf("breaker %s: a stream the upstream never processed counted as its failure", b.State)
	}
	if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", "UNAVAILABLE"); got != 0 {
		t.Errorf("grpc_requests_total{UNAVAILABLE} = %v, want 0", got)
	}
}

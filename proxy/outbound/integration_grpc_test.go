package outbound_test

// gRPC through the sidecar (docs/grpc.md): a real grpc-go client speaks
// h2c to the outbound listener, naming its destination in :authority,
// and a real grpc-go server answers.

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"
)

const healthSvc = "health-service:50051"

// healthServer answers Check with fail's code (OK when nil) after delay,
// and records the calls and the grpc-timeout each came with.
type healthServer struct {
	healthpb.UnimplementedHealthServer
	hits    atomic.Int64
	fail    atomic.Pointer[codes.Code]
	delay   time.Duration
	timeout atomic.Pointer[string]
	arrived chan struct{} // if not nil, told of each call (never blocking)
	held    chan struct{} // if not nil, Watch's second answer waits for its close
}

func (s *healthServer) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	s.hits.Add(1)
	if s.arrived != nil {
		select {
		case s.arrived <- struct{}{}:
		default:
		}
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("grpc-timeout"); len(v) > 0 {
			s.timeout.Store(&v[0])
		}
	}
	if d, ok := ctx.Deadline(); ok {
		v := time.Until(d).Round(100 * time.Millisecond).String()
		s.timeout.Store(&v)
	}
	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if c := s.fail.Load(); c != nil {
		return nil, grpcstatus.Error(*c, "failing on purpose")
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// Watch streams three answers 300 ms apart (the second, if s.held is
// set, once it is closed).
func (s *healthServer) Watch(_ *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	for i := 0; i < 3; i++ {
		if err := stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
			return err
		}
		if i == 0 && s.held != nil {
			select {
			case <-s.held:
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	return grpcstatus.Error(codes.Unavailable, "stream over")
}

// startGRPC is a real grpc-go health server on loopback, with opts
// (grpc.MaxConcurrentStreams, say), until the test ends.
func startGRPC(t *testing.T, hs healthpb.HealthServer, opts ...grpc.ServerOption) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(s, hs)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

// grpcClient dials the sidecar's outbound listener with h2c prior
// knowledge, as an app does whose gRPC channel points at the sidecar,
// naming the destination in :authority.
func grpcClient(t *testing.T, sc *testSidecar, authority string) healthpb.HealthClient {
	t.Helper()
	return healthpb.NewHealthClient(grpcChannel(t, sc, authority))
}

// grpcChannel is grpcClient's channel, for a test that waits for its
// connection first (readyGRPCClient).
func grpcChannel(t *testing.T, sc *testSidecar, authority string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+sc.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(authority))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func check(c healthpb.HealthClient, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
	return time.Since(start), err
}

func TestGRPCThroughSidecar(t *testing.T) {
	addr := startGRPC(t, health.NewServer())
	sc := startSidecar(t, "", resolve(addr, healthSvc))
	c := grpcClient(t, sc, healthSvc)
	for i := 0; i < 3; i++ {
		if _, err := check(c, 5*time.Second); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", "OK"); got != 3 {
		t.Errorf("grpc_requests_total{OK} = %v, want 3", got)
	}
	if got := sc.metric("minimesh_requests_total", "destination", healthSvc, "method", "POST", "code", "200"); got != 3 {
		t.Errorf("requests_total{POST,200} = %v, want 3", got)
	}
}

// TestGRPCBreaker: UNAVAILABLE counts as the 503 it is equivalent to,
// under the default failOn; the breaker opens on the third and the
// fourth call is answered by the sidecar in gRPC, without reaching the
// server.
func TestGRPCBreaker(t *testing.T) {
	hs := &healthServer{}
	unavailable := codes.Unavailable
	hs.fail.Store(&unavailable)
	addr := startGRPC(t, hs)
	var alog accessLog
	sc := startSidecar(t, policyDoc("health", healthSvc, "circuitBreaker:\n  consecutiveFailures: 3\n  openTimeout: 30s\n"), resolve(addr, healthSvc), withAccessLog(&alog))
	c := grpcClient(t, sc, healthSvc)
	for i := 1; i <= 3; i++ {
		_, err := check(c, 5*time.Second)
		if grpcstatus.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "failing on purpose") {
			t.Fatalf("call %d: %v, want the server's Unavailable", i, err)
		}
	}
	took, err := check(c, 5*time.Second)
	if grpcstatus.Code(err) != codes.Unavailable || !strings.Contains(grpcstatus.Convert(err).Message(), "minimesh") ||
		!strings.Contains(grpcstatus.Convert(err).Message(), healthSvc) {
		t.Fatalf("call 4: %v, want Unavailable from minimesh naming %s", err, healthSvc)
	}
	if took > fastFail {
		t.Errorf("fast fail took %v", took)
	}
	if n := hs.hits.Load(); n != 3 {
		t.Errorf("server saw %d calls, want 3", n)
	}
	if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", "UNAVAILABLE"); got != 4 {
		t.Errorf("grpc_requests_total{UNAVAILABLE} = %v, want 4", got)
	}
	if got := sc.metric("minimesh_circuit_breaker_rejected_total", "destination", healthSvc); got != 1 {
		t.Errorf("rejected_total = %v, want 1", got)
	}
	for i, e := range alog.wait(t, 4, 2*time.Second) {
		wantErr := map[bool]string{true: "circuit-open", false: ""}[i == 3]
		if e.Status != 200 || e.GRPCStatus != "UNAVAILABLE" || e.Error != wantErr || e.Method != "POST" || e.Path != "/grpc.health.v1.Health/Check" {
			t.Errorf("access log line %d: %+v, want status 200, grpc_status UNAVAILABLE, error %q", i+1, e, wantErr)
		}
	}
}

// TestGRPCOtherCodesDoNotTrip: NOT_FOUND counts as a 404, which the
// default failOn does not count.
func TestGRPCOtherCodesDoNotTrip(t *testing.T) {
	hs := &healthServer{}
	nf := codes.NotFound
	hs.fail.Store(&nf)
	addr := startGRPC(t, hs)
	sc := startSidecar(t, policyDoc("health", healthSvc, "circuitBreaker:\n  consecutiveFailures: 2\n"), resolve(addr, healthSvc))
	c := grpcClient(t, sc, healthSvc)
	for i := 1; i <= 4; i++ {
		if _, err := check(c, 5*time.Second); grpcstatus.Code(err) != codes.NotFound {
			t.Fatalf("call %d: %v, want NotFound", i, err)
		}
	}
	if n := hs.hits.Load(); n != 4 {
		t.Errorf("server saw %d calls, want 4", n)
	}
}

// TestGRPCTimeout: the policy's timeout answers DEADLINE_EXCEEDED, and
// the upstream learns the cap in grpc-timeout; a shorter grpc-timeout of
// the client's is kept.
func TestGRPCTimeout(t *testing.T) {
	hs := &healthServer{delay: 2 * time.Second}
	addr := startGRPC(t, hs)
	sc := startSidecar(t, policyDoc("health", healthSvc, "timeout: 300ms\n"), resolve(addr, healthSvc))
	c := grpcClient(t, sc, healthSvc)
	took, err := check(c, 10*time.Second)
	// The sidecar's timer and the server's deadline (the same 300ms)
	// race: either answers DEADLINE_EXCEEDED.
	if grpcstatus.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("%v, want DeadlineExceeded", err)
	}
	if took > 1500*time.Millisecond {
		t.Errorf("took %v, want about 300ms", took)
	}
	if v := hs.timeout.Load(); v == nil || *v != "300ms" {
		t.Errorf("the server's deadline was %v, want the policy's 300ms", v)
	}
	if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", "DEADLINE_EXCEEDED"); got != 1 {
		t.Errorf("grpc_requests_total{DEADLINE_EXCEEDED} = %v, want 1", got)
	}
	hs.timeout.Store(nil)
	took, err = check(c, 100*time.Millisecond)
	if grpcstatus.Code(err) != codes.DeadlineExceeded || took > time.Second {
		t.Fatalf("%v after %v, want DeadlineExceeded after about 100ms", err, took)
	}
	if v := hs.timeout.Load(); v == nil || *v != "100ms" {
		t.Errorf("the server's deadline was %v, want the client's 100ms", v)
	}
}

// TestGRPCConnectFailure: an unreachable upstream is UNAVAILABLE from
// minimesh.
func TestGRPCConnectFailure(t *testing.T) {
	sc := startSidecar(t, "", resolve(refused.Addr(t), healthSvc))
	c := grpcClient(t, sc, healthSvc)
	_, err := check(c, 5*time.Second)
	if grpcstatus.Code(err) != codes.Unavailable || !strings.Contains(grpcstatus.Convert(err).Message(), "minimesh: cannot connect to "+healthSvc) {
		t.Fatalf("%v, want Unavailable from minimesh", err)
	}
}

// TestGRPCServerStreaming: a server-streaming call's messages reach the
// client as they are sent, and its trailers' status with them.
func TestGRPCServerStreaming(t *testing.T) {
	// The server sends nothing more until the client has the first
	// message: one the sidecar held back (buffered, not streamed) never
	// comes. (Told so, not by the time it took, which a loaded machine
	// stretches.)
	hs := &healthServer{held: make(chan struct{})}
	addr := startGRPC(t, hs)
	sc := startSidecar(t, "", resolve(addr, healthSvc))
	c := grpcClient(t, sc, healthSvc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("the first message, while the server holds the rest: %v (buffered, not streamed?)", err)
	}
	close(hs.held)
	n := 1
	for {
		if _, err = s.Recv(); err != nil {
			break
		}
		n++
	}
	if n != 3 || grpcstatus.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "stream over") {
		t.Errorf("%d messages then %v; want 3 then the server's Unavailable", n, err)
	}
	sc.waitMetric(1, 2*time.Second, "minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", "UNAVAILABLE")
}

// TestGRPCRedirected: a redirected connection whose first bytes are the
// HTTP/2 preface is served as HTTP/2 by the redirected connections'
// server: the call goes to the original destination, named by
// :authority on its port.
func TestGRPCRedirected(t *testing.T) {
	addr := startGRPC(t, health.NewServer())
	orig := netip.MustParseAddrPort(addr)
	m := telemetry.New(0)
	h := outbound.New(outbound.Config{Metrics: m}, policy.NewTable(nil, "default"))
	c := redirectedHealth(t, h, orig, "health-service")
	for i := 0; i < 3; i++ {
		if _, err := check(c, 5*time.Second); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	dest := net.JoinHostPort("health-service", strconv.Itoa(int(orig.Port())))
	if got := grpcOKCalls(t, m, dest); got != 3 {
		t.Errorf("grpc_requests_total{destination=%s, OK} = %v, want 3", dest, got)
	}
}

// TestBrokenHTTP2: a client that breaks HTTP/2 gets its connection
// closed (after a GOAWAY or a 400), and the sidecar serves the next call.
func TestBrokenHTTP2(t *testing.T) {
	addr := startGRPC(t, health.NewServer())
	sc := startSidecar(t, "", resolve(addr, healthSvc))
	const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	for _, tc := range []struct {
		name string
		send string
		want string // in what the sidecar sends back before closing
	}{
		// Not the preface: an HTTP/1.x request line it is not either.
		{"bad preface", "PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", "400"},
		// A DATA frame on stream 0 announcing 16 MiB - 1 bytes, over the
		// 1 MiB frame size limit: GOAWAY (type 7).
		{"oversized frame", preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00" + "\xff\xff\xff\x00\x00\x00\x00\x00\x00", "GOAWAY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", sc.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte(tc.send)); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			var got []byte
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						t.Fatalf("the connection is still open after %q", got)
					}
					break
				}
			}
			if tc.want == "GOAWAY" {
				// Walk the frames: 9-byte headers, type at [3].
				seen := false
				for b := got; len(b) >= 9; {
					n := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
					seen = seen || b[3] == 0x7
					if len(b) < 9+n {
						break
					}
					b = b[9+n:]
				}
				if !seen {
					t.Errorf("no GOAWAY in %q", got)
				}
			} else if !strings.Contains(string(got), tc.want) {
				t.Errorf("got %q, want %q in it", got, tc.want)
			}
		})
	}
	if _, err := check(grpcClient(t, sc, healthSvc), 5*time.Second); err != nil {
		t.Fatalf("the next call: %v", err)
	}
}

// flakyHealth fails its first fails calls with code, then answers OK.
type flakyHealth struct {
	healthpb.UnimplementedHealthServer
	hits  atomic.Int64
	fails int64
	code  codes.Code
}

func (s *flakyHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if s.hits.Add(1) <= s.fails {
		return nil, grpcstatus.Error(s.code, "failing on purpose")
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// TestGRPCRetries: a gRPC code in retryOn declares the calls failing
// with it safe to repeat: a unary call is sent again; an HTTP status in
// retryOn alone does not make a call (a POST) safe, and a stream of
// messages is never sent again.
func TestGRPCRetries(t *testing.T) {
	for _, tc := range []struct {
		name     string
		retryOn  string
		wantHits int64
		wantErr  codes.Code
	}{
		{"grpc-unavailable retried", "[grpc-unavailable]", 2, codes.OK},
		{"503 alone is not safe", `["503", gateway-error]`, 1, codes.Unavailable},
		{"another code is not retried", "[grpc-resource-exhausted]", 1, codes.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := &flakyHealth{fails: 1, code: codes.Unavailable}
			addr := startGRPC(t, hs)
			sc := startSidecar(t, policyDoc("health", healthSvc, "retries:\n  attempts: 2\n  retryOn: "+tc.retryOn+"\n  backoff: {base: 1ms, max: 2ms}\n"), resolve(addr, healthSvc))
			_, err := check(grpcClient(t, sc, healthSvc), 5*time.Second)
			if grpcstatus.Code(err) != tc.wantErr {
				t.Fatalf("%v, want %v", err, tc.wantErr)
			}
			if n := hs.hits.Load(); n != tc.wantHits {
				t.Errorf("the server saw %d calls, want %d", n, tc.wantHits)
			}
			if tc.wantHits == 2 {
				if got := sc.metric("minimesh_retries_total", "destination", healthSvc, "reason", "grpc-unavailable"); got != 1 {
					t.Errorf("retries_total{reason=grpc-unavailable} = %v, want 1", got)
				}
			}
		})
	}
	t.Run("client stream not replayed", func(t *testing.T) {
		var calls, msgs atomic.Int64
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer()
		s.RegisterService(&grpc.ServiceDesc{ServiceName: "test.Collector", HandlerType: (*any)(nil), Streams: []grpc.StreamDesc{{
			StreamName: "Collect", ClientStreams: true,
			Handler: func(_ any, stream grpc.ServerStream) error {
				calls.Add(1)
				for {
					if err := stream.RecvMsg(new(healthpb.HealthCheckRequest)); err != nil {
						break
					}
					msgs.Add(1)
				}
				return grpcstatus.Error(codes.Unavailable, "failing on purpose")
			},
		}}}, struct{}{})
		go func() { _ = s.Serve(ln) }()
		t.Cleanup(s.Stop)
		sc := startSidecar(t, policyDoc("health", healthSvc, "retries:\n  attempts: 2\n  retryOn: [grpc-unavailable]\n"), resolve(ln.Addr().String(), healthSvc))
		cc, err := grpc.NewClient("passthrough:///"+sc.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(healthSvc))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := cc.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true}, "/test.Collector/Collect")
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if err := st.SendMsg(&healthpb.HealthCheckRequest{Service: "x"}); err != nil {
				t.Fatal(err)
			}
		}
		_ = st.CloseSend()
		err = st.RecvMsg(new(healthpb.HealthCheckResponse))
		if grpcstatus.Code(err) != codes.Unavailable {
			t.Fatalf("%v, want the server's Unavailable", err)
		}
		if calls.Load() != 1 || msgs.Load() != 2 {
			t.Errorf("the server saw %d calls with %d messages, want 1 with 2", calls.Load(), msgs.Load())
		}
	})
}

// TestGRPCFailOn: a gRPC code in failOn counts for the breaker although
// its HTTP equivalent (429) is no 5xx.
func TestGRPCFailOn(t *testing.T) {
	hs := &flakyHealth{fails: 100, code: codes.ResourceExhausted}
	addr := startGRPC(t, hs)
	sc := startSidecar(t, policyDoc("health", healthSvc, "circuitBreaker:\n  consecutiveFailures: 2\n  failOn: [5xx, grpc-resource-exhausted]\n"), resolve(addr, healthSvc))
	c := grpcClient(t, sc, healthSvc)
	for i := 1; i <= 3; i++ {
		_, err := check(c, 5*time.Second)
		if grpcstatus.Code(err) != map[bool]codes.Code{true: codes.ResourceExhausted, false: codes.Unavailable}[i <= 2] {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if n := hs.hits.Load(); n != 2 {
		t.Errorf("the server saw %d calls, want 2", n)
	}
}

// TestHTTP2Bounds: an app cannot make the sidecar hold more than
// H2MaxConcurrentStreams streams on one connection: the rest are reset,
// the connection stays, and the sidecar serves on.
func TestHTTP2Bounds(t *testing.T) {
	// An h2c upstream that holds every request until the test ends.
	var hits atomic.Int64
	release := make(chan struct{})
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	up := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})}
	uln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = up.Serve(uln) }()
	t.Cleanup(func() { close(release); up.Close() })
	const hang = "hang-service:80"
	addr := startGRPC(t, health.NewServer())
	sc := startSidecar(t, "", map[string]string{hang: uln.Addr().String(), healthSvc: addr})

	t.Run("streams", func(t *testing.T) {
		c, err := net.Dial("tcp", sc.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fr := http2.NewFramer(c, c)
		if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
			t.Fatal(err)
		}
		if err := fr.WriteSettings(); err != nil {
			t.Fatal(err)
		}
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		const extra = 10
		for i := 0; i < outbound.H2MaxConcurrentStreams+extra; i++ {
			hb.Reset()
			for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", hang}} {
				_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
				t.Fatal(err)
			}
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resets := map[uint32]http2.ErrCode{}
		for len(resets) < extra {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("after %d resets: %v", len(resets), err)
			}
			switch f := f.(type) {
			case *http2.RSTStreamFrame:
				resets[f.StreamID] = f.ErrCode
			case *http2.GoAwayFrame:
				t.Fatalf("GOAWAY %v: the connection should stay", f.ErrCode)
			}
		}
		for id, code := range resets {
			if id <= 2*outbound.H2MaxConcurrentStreams || code != http2.ErrCodeRefusedStream && code != http2.ErrCodeProtocol {
				t.Errorf("stream %d reset with %v, want only streams past the %dth refused", id, code, outbound.H2MaxConcurrentStreams)
			}
		}
		if !proxytest.Poll(5*time.Second, 10*time.Millisecond, func() bool { return hits.Load() == outbound.H2MaxConcurrentStreams }) {
			t.Errorf("the upstream holds %d requests, want %d", hits.Load(), outbound.H2MaxConcurrentStreams)
		}
	})

	if _, err := check(grpcClient(t, sc, healthSvc), 5*time.Second); err != nil {
		t.Fatalf("the next call: %v", err)
	}
}

// TestGRPCDrain: a call in flight on an HTTP/2 connection when the
// sidecar starts draining finishes with its answer, and the sidecar then
// stops (the idle connection closed after the drain's idle grace).
func TestGRPCDrain(t *testing.T) {
	hs := &healthServer{delay: 500 * time.Millisecond, arrived: make(chan struct{}, 1)}
	addr := startGRPC(t, hs)
	sc := startSidecar(t, "", resolve(addr, healthSvc), withDrainTimeout(3*time.Second))
	c := grpcClient(t, sc, healthSvc)
	res := make(chan error, 1)
	go func() { _, err := check(c, 5*time.Second); res <- err }()
	<-hs.arrived // the call is at the server
	stopped := sc.Stop()
	if err := <-res; err != nil {
		t.Errorf("the call in flight: %v, want its answer", err)
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("the sidecar did not stop")
	}
}

// TestGRPCCutAfterHeaders: a call whose upstream fails after its
// headers and first message is recorded, in the metric and the access
// log alike, as the status its client read: the sidecar ends it, between
// two messages, with trailers saying why (DEADLINE_EXCEEDED for its
// policy's timeout, UNAVAILABLE for the upstream gone; a reset read as
// INTERNAL before), and DEADLINE_EXCEEDED when the client's own
// deadline ran out, whoever ends the call then. The metric had
// UNAVAILABLE and the log UNKNOWN for all three.
func TestGRPCCutAfterHeaders(t *testing.T) {
	names := map[codes.Code]string{codes.Unavailable: "UNAVAILABLE", codes.DeadlineExceeded: "DEADLINE_EXCEEDED"}
	for _, tc := range []struct {
		name     string
		policy   string
		deadline time.Duration
		stop     bool // stop the upstream after the first message
		want     codes.Code
		kinds    []string // the access log's error: one of
	}{
		{"policy timeout", "timeout: 450ms\n", 10 * time.Second, false, codes.DeadlineExceeded, []string{"timeout"}},
		{"upstream gone", "", 10 * time.Second, true, codes.Unavailable, []string{"reset"}},
		// The client's cancel, the upstream's DEADLINE_EXCEEDED or its
		// reset at the deadline: whichever comes first.
		{"client deadline", "", 450 * time.Millisecond, false, codes.DeadlineExceeded, []string{"", "timeout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			s := grpc.NewServer()
			healthpb.RegisterHealthServer(s, &healthServer{})
			go func() { _ = s.Serve(ln) }()
			t.Cleanup(s.Stop)
			var alog accessLog
			sc := startSidecar(t, policyDoc("health", healthSvc, tc.policy), resolve(ln.Addr().String(), healthSvc), withAccessLog(&alog))
			c := grpcClient(t, sc, healthSvc)
			ctx, cancel := context.WithTimeout(context.Background(), tc.deadline)
			defer cancel()
			w, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Recv(); err != nil {
				t.Fatalf("first message: %v", err)
			}
			if tc.stop {
				s.Stop()
			}
			for err == nil {
				_, err = w.Recv()
			}
			if got := grpcstatus.Code(err); got != tc.want {
				t.Fatalf("the client read %v (%v), want %v", got, err, tc.want)
			}
			want := names[tc.want]
			sc.waitMetric(1, 2*time.Second, "minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", want)
			if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc); got != 1 {
				t.Errorf("grpc_requests_total = %v, want 1", got)
			}
			e := alog.wait(t, 1, 2*time.Second)[0]
			if e.GRPCStatus != want || !slices.Contains(tc.kinds, e.Error) {
				t.Errorf("access log grpc_status %q, error %q: want %q, one of %q", e.GRPCStatus, e.Error, want, tc.kinds)
			}
		})
	}
}

// redirectedHealth is a gRPC health client whose calls h serves as
// redirected from orig (serveRedirected), with authority as their
// :authority. It is closed when the test ends.
func redirectedHealth(t *testing.T, h *outbound.Handler, orig netip.AddrPort, authority string) healthpb.HealthClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+serveRedirected(t, h, orig), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(authority))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return healthpb.NewHealthClient(cc)
}

// notServingHealth is a gRPC health server that answers NOT_SERVING: an
// upstream the calls must not reach.
func notServingHealth() *health.Server {
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	return hs
}

// grpcOKCalls is m's count of gRPC calls to dest that ended OK.
func grpcOKCalls(t *testing.T, m *telemetry.Metrics, dest string) float64 {
	t.Helper()
	ms, err := proxytest.ParseMetrics(string(m.Registry.AppendText(nil)))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := ms.Value("minimesh_grpc_requests_total", "destination", dest, "grpc_code", "OK")
	return got
}

// serveRedirected serves h's redirected connections (HTTP/1.x and h2c) on
// a loopback listener whose every connection was redirected from orig, as
// iptables would, and returns its address. It stops when the test ends.
func serveRedirected(t *testing.T, h *outbound.Handler, orig netip.AddrPort) string {
	t.Helper()
	srv := &http.Server{
		Handler:     h.Transparent(),
		Protocols:   outbound.ServerProtocols(),
		HTTP2:       outbound.ServerHTTP2(),
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context { return outbound.WithOriginalDst(ctx, orig) },
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); h.CloseIdleConnections() })
	return ln.Addr().String()
}

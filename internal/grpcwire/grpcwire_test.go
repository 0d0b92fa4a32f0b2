package grpcwire

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// serve runs grpc-go's health service: a unary call (Check) and a server
// stream (Watch) to talk to.
func serve(t *testing.T) (string, *health.Server, *grpc.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	h := health.NewServer()
	healthpb.RegisterHealthServer(g, h)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return ln.Addr().String(), h, g
}

func TestInvoke(t *testing.T) {
	addr, h, _ := serve(t)
	h.SetServingStatus("geo", healthpb.HealthCheckResponse_SERVING)
	c := NewClient(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := proto.Marshal(&healthpb.HealthCheckRequest{Service: "geo"})
	b, err := Invoke(ctx, c, addr, "/grpc.health.v1.Health/Check", req)
	if err != nil {
		t.Fatal(err)
	}
	var resp healthpb.HealthCheckResponse
	if err := proto.Unmarshal(b, &resp); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("%v %v", &resp, err)
	}
	// A status other than OK, with its message (percent-encoded on the wire).
	req, _ = proto.Marshal(&healthpb.HealthCheckRequest{Service: "no such service: é"})
	_, err = Invoke(ctx, c, addr, "/grpc.health.v1.Health/Check", req)
	var e *Error
	if !errors.As(err, &e) || e.Code != 5 || e.Message != "unknown service" {
		t.Fatalf("err %#v; want NotFound", err)
	}
	// A method the server does not have: a trailers-only answer.
	if _, err := Invoke(ctx, c, addr, "/grpc.health.v1.Health/Nope", nil); !errors.As(err, &e) || e.Code != 12 {
		t.Fatalf("err %v; want Unimplemented", err)
	}
	// Nobody listening: Unavailable.
	if _, err := Invoke(ctx, c, "127.0.0.1:1", "/grpc.health.v1.Health/Check", req); !errors.As(err, &e) || e.Code != 14 {
		t.Fatalf("err %v; want Unavailable", err)
	}
}

func TestStream(t *testing.T) {
	addr, h, g := serve(t)
	h.SetServingStatus("geo", healthpb.HealthCheckResponse_SERVING)
	c := NewClient(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := NewStream(ctx, c, addr, "/grpc.health.v1.Health/Watch")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	req, _ := proto.Marshal(&healthpb.HealthCheckRequest{Service: "geo"})
	if err := s.Send(req); err != nil {
		t.Fatal(err)
	}
	s.CloseSend() // Watch is server-streaming: grpc-go waits for the end of the request
	next := func() healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		b, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var r healthpb.HealthCheckResponse
		if err := proto.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		return r.Status
	}
	if st := next(); st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first %v", st)
	}
	h.SetServingStatus("geo", healthpb.HealthCheckResponse_NOT_SERVING)
	if st := next(); st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("second %v", st)
	}
	// The server going away ends the stream with an error, not io.EOF.
	start := time.Now()
	g.Stop()
	if _, err := s.Recv(); err == nil || err == io.EOF || time.Since(start) > 5*time.Second {
		t.Fatalf("err %v after %v; want the end of the connection, at once", err, time.Since(start))
	}
}

// TestStreamEnds: a stream to nowhere fails at Recv (and Send does not
// block), and Close returns.
func TestStreamEnds(t *testing.T) {
	c := NewClient(time.Second)
	s, err := NewStream(context.Background(), c, "127.0.0.1:1", "/x.Y/Z")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Send([]byte{1}) }()
	if _, err := s.Recv(); err == nil {
		t.Fatal("Recv from nowhere")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Send blocked")
	}
	s.Close()

	addr, _, _ := serve(t)
	ctx, cancel := context.WithCancel(context.Background())
	s, err = NewStream(ctx, c, addr, "/grpc.health.v1.Health/Watch")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := proto.Marshal(&healthpb.HealthCheckRequest{Service: "x"})
	if err := s.Send(req); err != nil {
		t.Fatal(err)
	}
	s.CloseSend()
	if _, err := s.Recv(); err != nil { // SERVICE_UNKNOWN
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { _, err := s.Recv(); got <- err }()
	cancel()
	select {
	case err := <-got:
		if err == nil {
			t.Fatal("a message after the context ended")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Recv not ended by the context")
	}
	s.Close()
}

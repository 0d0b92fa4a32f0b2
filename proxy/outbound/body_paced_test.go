package outbound_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// pacedLimit stands in for --request-body-timeout's 30 s; the app's
// pause is twice it, so that a watch still in force fires within it.
const (
	pacedLimit = 500 * time.Millisecond
	pacedPause = 2 * pacedLimit
)

// startReadAllUpstream answers each request only once it has read the
// whole body, as a client-streaming gRPC server does: a gRPC call gets
// one message and grpc-status 0, any other request a 200 whose body is
// the count of bytes read. It speaks HTTP/1.1 and h2c.
func startReadAllUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		if r.Header.Get("Content-Type") == "application/grpc" || r.Header.Get("Content-Type") == "application/grpc+proto" {
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status")
			_, _ = w.Write([]byte{0, 0, 0, 0, 1, byte(len(b))})
			w.Header().Set("Grpc-Status", "0")
			return
		}
		_, _ = io.WriteString(w, strconv.Itoa(len(b)))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestBodyTimeoutSparesAppPacedStreams: --request-body-timeout is for a
// body the app has stopped sending, not for a stream the app writes at its
// own pace. A gRPC call whose client pauses longer than the limit before
// or between messages, while its server waits for the end of the stream
// before it answers (client streaming), and any other HTTP/2 body without
// a content-length, reach their upstream whole and get its answer. Before
// 2026-12-07 each got the sidecar's 408 (gRPC: DEADLINE_EXCEEDED) at the
// limit. An HTTP/1.1 body and an HTTP/2 upload of a declared length keep
// the limit: the same pause gets the 408, which shows the watch in force.
func TestBodyTimeoutSparesAppPacedStreams(t *testing.T) {
	up := startReadAllUpstream(t)
	sc := startSidecar(t, "", resolve(up, healthSvc), withRequestBodyTimeout(pacedLimit))
	first, rest := []byte{0, 0, 0, 0, 1, 'a'}, []byte{0, 0, 0, 0, 1, 'b'} // two gRPC messages
	for _, tc := range []struct {
		name        string
		h1          bool
		contentType string
		length      int64 // the content-length the app declares, -1 none
		before      bool  // the pause comes before the first byte of the body
		want        int   // 200: the upstream's answer; 408: the sidecar's
	}{
		{"gRPC, pause between messages", false, "application/grpc", -1, false, http.StatusOK},
		{"gRPC, pause before the first message", false, "application/grpc", -1, true, http.StatusOK},
		{"gRPC+proto, pause between messages", false, "application/grpc+proto", -1, false, http.StatusOK},
		{"HTTP/2 stream without content-length", false, "application/octet-stream", -1, false, http.StatusOK},
		{"HTTP/2 upload of a declared length", false, "application/octet-stream", 12, false, http.StatusRequestTimeout},
		{"HTTP/1.1 chunked", true, "application/octet-stream", -1, false, http.StatusRequestTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp *http.Response
			var err error
			if tc.h1 {
				resp, err = pausedHTTP1(t, sc, tc.contentType, first, rest)
			} else {
				resp, err = pausedHTTP2(t, sc, tc.contentType, tc.length, tc.before, first, rest)
			}
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("reading the answer: %v", err)
			}
			if tc.want == http.StatusRequestTimeout {
				expectRefusal(t, resp, body, http.StatusRequestTimeout, "bad-request")
				return
			}
			if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Minimesh-Error") != "" {
				t.Fatalf("status %d, X-Minimesh-Error %q, body %q: want the upstream's 200 after the app's %v pause",
					resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), body, pacedPause)
			}
			n := len(first) + len(rest)
			if tc.contentType == "application/octet-stream" {
				if string(body) != strconv.Itoa(n) {
					t.Fatalf("the upstream read %q bytes, want %d", body, n)
				}
			} else if len(body) != 6 || int(body[5]) != n || resp.Trailer.Get("Grpc-Status") != "0" {
				t.Fatalf("answer %v, grpc-status %q: want the upstream's message counting %d bytes, and OK", body, resp.Trailer.Get("Grpc-Status"), n)
			}
		})
	}
}

// pausedHTTP2 sends a request over h2c whose body is first, then, after
// pacedPause or as soon as the answer comes, rest.
func pausedHTTP2(t *testing.T, sc *testSidecar, contentType string, length int64, before bool, first, rest []byte) (*http.Response, error) {
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	req, err := http.NewRequest(http.MethodPost, "http://"+sc.Addr+"/pkg.Svc/Upload", pr)
	if err != nil {
		return nil, err
	}
	req.Host, req.ContentLength = healthSvc, length
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Te", "trailers")
	type result struct {
		resp *http.Response
		err  error
	}
	answered := make(chan result, 1)
	client := h2cClient(t)
	go func() {
		resp, err := client.Do(req)
		answered <- result{resp, err}
	}()
	if !before {
		if _, err := pw.Write(first); err != nil {
			return nil, fmt.Errorf("sending the first message: %w", err)
		}
	}
	select {
	case r := <-answered: // the sidecar's answer, within the pause
		return r.resp, r.err
	case <-time.After(pacedPause):
	}
	if before {
		rest = append(append([]byte(nil), first...), rest...)
	}
	if _, err := pw.Write(rest); err != nil {
		return nil, fmt.Errorf("sending the rest after the pause: %w", err)
	}
	pw.Close()
	select {
	case r := <-answered:
		return r.resp, r.err
	case <-time.After(5 * time.Second):
		return nil, fmt.Errorf("no answer 5s after the body's end")
	}
}

// pausedHTTP1 is pausedHTTP2 over HTTP/1.1, the body chunked.
func pausedHTTP1(t *testing.T, sc *testSidecar, contentType string, first, rest []byte) (*http.Response, error) {
	c := dialSidecar(t, sc)
	head := "POST http://" + healthSvc + "/upload HTTP/1.1\r\nHost: " + healthSvc + "\r\nContent-Type: " + contentType +
		"\r\nTransfer-Encoding: chunked\r\n\r\n"
	if _, err := fmt.Fprintf(c, "%s%x\r\n%s\r\n", head, len(first), first); err != nil {
		return nil, err
	}
	type result struct {
		resp *http.Response
		err  error
	}
	answered := make(chan result, 1)
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		answered <- result{resp, err}
	}()
	select {
	case r := <-answered:
		return r.resp, r.err
	case <-time.After(pacedPause):
	}
	if _, err := fmt.Fprintf(c, "%x\r\n%s\r\n0\r\n\r\n", len(rest), rest); err != nil {
		return nil, err
	}
	r := <-answered // (dialSidecar's deadline bounds the wait)
	return r.resp, r.err
}

// TestBodyTimeoutSparesGRPCClientStream: a grpc-go client whose stream's
// first message comes later than --request-body-timeout, to a grpc-go
// server that answers once it has the message (its headers go with it), is
// answered OK: the sidecar's DEADLINE_EXCEEDED came at the limit before
// 2026-12-07.
func TestBodyTimeoutSparesGRPCClientStream(t *testing.T) {
	sc := startSidecar(t, "", resolve(startGRPC(t, health.NewServer()), healthSvc), withRequestBodyTimeout(pacedLimit))
	cc, err := grpc.NewClient("passthrough:///"+sc.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(healthSvc))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	for _, tc := range []struct {
		name string
		desc grpc.StreamDesc
	}{
		{"client streaming", grpc.StreamDesc{ClientStreams: true}},
		{"bidirectional", grpc.StreamDesc{ClientStreams: true, ServerStreams: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := cc.NewStream(ctx, &tc.desc, "/grpc.health.v1.Health/Check")
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(pacedPause) // the client's pause, twice the limit: the point of the test
			if err := s.SendMsg(&healthpb.HealthCheckRequest{}); err != nil {
				t.Fatalf("sending after the pause: %v", err)
			}
			if err := s.CloseSend(); err != nil {
				t.Fatal(err)
			}
			var got healthpb.HealthCheckResponse
			if err := s.RecvMsg(&got); err != nil {
				t.Fatalf("after a %v pause: %v, want the server's OK", pacedPause, err)
			}
			if got.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("status %v, want SERVING", got.Status)
			}
		})
	}
}

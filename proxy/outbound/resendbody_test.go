package outbound

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestResendBody drives the ReverseProxy's body through h2Tries as Go's
// HTTP/2 transport does: a request placed on a connection that could not
// take it has its unread body closed, then goes again on another and is
// read (resendBody). The upstream answers with what it read.
func TestResendBody(t *testing.T) {
	resent := func(b io.ReadCloser) (string, error) {
		b.Close()
		s, err := io.ReadAll(b)
		return string(s), err
	}
	for _, tc := range []struct {
		name  string
		h2    bool // through h2Tries
		sends func(b io.ReadCloser) (string, error)
		want  string // the answer's body, or the 502's cause
	}{
		{"closed unread then resent", true, resent, "hello"},
		// The same without resendBody: the ReverseProxy's body refuses.
		{"closed unread then resent, bare", false, resent, "ReverseProxy does an invalid Read on closed Body"},
		{"read then closed", true, func(b io.ReadCloser) (string, error) {
			p := make([]byte, 2)
			if _, err := io.ReadFull(b, p); err != nil {
				return "", err
			}
			b.Close()
			_, err := b.Read(p)
			return "", err
		}, http.ErrBodyReadAfterClose.Error()},
		{"resent then closed", true, func(b io.ReadCloser) (string, error) {
			b.Close()
			s, err := io.ReadAll(b)
			b.Close()
			if _, rerr := b.Read(make([]byte, 1)); rerr == nil || err != nil {
				return "", errors.Join(errors.New("read after the resend's close did not fail"), err)
			}
			return string(s), nil
		}, "hello"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var upstream http.RoundTripper = roundTripFunc(func(r *http.Request) (*http.Response, error) {
				s, err := tc.sends(r.Body)
				if err != nil {
					return nil, err
				}
				return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(s)), Request: r}, nil
			})
			if tc.h2 {
				upstream = h2Tries{upstream}
			}
			var cause error
			u, _ := url.Parse("http://upstream.test")
			rp := &httputil.ReverseProxy{
				Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
				Transport: upstream,
				ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
					cause = err
					w.WriteHeader(http.StatusBadGateway)
				},
			}
			w := httptest.NewRecorder()
			rp.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "http://app.test/", strings.NewReader("hello")))
			got := w.Body.String()
			if cause != nil {
				got = cause.Error()
			}
			if got != tc.want {
				t.Errorf("got %q (status %d), want %q", got, w.Code, tc.want)
			}
		})
	}
}

// gateHealth answers Check at once, or, while gated, once the gate opens;
// entered says a gated call arrived.
type gateHealth struct {
	healthpb.UnimplementedHealthServer
	gate    chan struct{}
	entered chan struct{}
}

func (s *gateHealth) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if s.gate != nil {
		s.entered <- struct{}{}
		select {
		case <-s.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// goAwayWatch is a connection that says when Go's transport has handled
// a GOAWAY it read: it answered the first PING read after it (its read
// loop handles frames in order), as grpc-go's GracefulStop sends one.
type goAwayWatch struct {
	net.Conn
	mu     sync.Mutex
	read   []byte // the frames read, whole ones parsed from off
	off    int
	goAway bool
	ack    []byte // the PING ACK to wait for, once its PING was read
	wrote  []byte
	acked  chan struct{}
	once   sync.Once
}

func (c *goAwayWatch) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read = append(c.read, p[:n]...)
	for len(c.read)-c.off >= 9 {
		h := c.read[c.off:]
		size := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
		if len(h) < 9+size {
			break
		}
		switch typ, flags := h[3], h[4]; {
		case typ == 7: // GOAWAY
			c.goAway = true
		case typ == 6 && flags&1 == 0 && c.goAway && c.ack == nil && size == 8: // a PING after it
			c.ack = append([]byte{0, 0, 8, 6, 1, 0, 0, 0, 0}, h[9:17]...)
		}
		c.off += 9 + size
	}
	return n, err
}

func (c *goAwayWatch) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.wrote = append(c.wrote, p[:n]...)
	if c.ack != nil && bytes.Contains(c.wrote, c.ack) {
		c.once.Do(func() { close(c.acked) })
	}
	c.mu.Unlock()
	return n, err
}

// TestResendBodyRealTransport: Go's HTTP/2 transport, a grpc-go server
// and the ReverseProxy, as the sidecar forwards a gRPC call. The call is
// placed on a connection whose server then stops gracefully before the
// call's stream is created (its GOAWAY read, held in the GotConn hook):
// the transport closes the call's body, and sends the call on the other
// connection it holds, reading that body again (resendBody). Before, the
// ReverseProxy's body refused the read and the call, which no server
// saw, failed.
func TestResendBodyRealTransport(t *testing.T) {
	serve := func(hs healthpb.HealthServer) (*grpc.Server, string) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer(grpc.MaxConcurrentStreams(1))
		healthpb.RegisterHealthServer(s, hs)
		go func() { _ = s.Serve(l) }()
		t.Cleanup(s.Stop)
		return s, l.Addr().String()
	}
	gated := &gateHealth{gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	first, firstAddr := serve(gated)
	_, secondAddr := serve(&gateHealth{})

	// The first dial goes to the first server, watched; every other to
	// the second.
	var dials atomic.Int32
	watch := &goAwayWatch{acked: make(chan struct{})}
	var d net.Dialer
	tr := newH2CTransport(func(ctx context.Context, network, _ string) (net.Conn, error) {
		if dials.Add(1) == 1 {
			c, err := d.DialContext(ctx, network, firstAddr)
			if err != nil {
				return nil, err
			}
			watch.Conn = c
			return watch, nil
		}
		return d.DialContext(ctx, network, secondAddr)
	})
	t.Cleanup(tr.CloseIdleConnections)
	u, _ := url.Parse("http://health-service:50051")
	var cause atomic.Pointer[error]
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport: h2Tries{tr},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			cause.Store(&err)
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	call := func(ctx context.Context) *httptest.ResponseRecorder {
		r := httptest.NewRequestWithContext(ctx, http.MethodPost, "http://health-service:50051/grpc.health.v1.Health/Check", bytes.NewReader([]byte{0, 0, 0, 0, 0}))
		r.GetBody = nil // as a server's request: nothing to send again from
		r.Header.Set("Content-Type", "application/grpc")
		r.Header.Set("Te", "trailers")
		w := httptest.NewRecorder()
		rp.ServeHTTP(w, r)
		return w
	}
	ok := func(what string, w *httptest.ResponseRecorder) {
		t.Helper()
		res := w.Result()
		if st := res.Trailer.Get("Grpc-Status") + res.Header.Get("Grpc-Status"); res.StatusCode != http.StatusOK || st != "0" {
			var err error
			if p := cause.Load(); p != nil {
				err = *p
			}
			t.Fatalf("%s: status %d, grpc-status %q (%v), want 200 and 0", what, res.StatusCode, st, err)
		}
	}

	// One call holds the first connection's one stream; the next finds
	// it full and dials the second connection.
	held := make(chan *httptest.ResponseRecorder, 1)
	go func() { held <- call(context.Background()) }()
	<-gated.entered
	ok("a call beside the held one", call(context.Background()))
	gated.gate <- struct{}{} // and closed below: no call waits on it again
	ok("the held call", <-held)
	close(gated.gate)
	gated.gate = nil
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2: one connection to each server", n)
	}

	// The call is placed on the first connection (the pool's first with
	// room), whose server stops before the call's stream is created.
	placed := false
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if placed {
			return
		}
		placed = true
		if hc, _ := info.Conn.(*h2Conn); hc == nil || hc.Conn != watch {
			t.Errorf("the call was placed first on %v, want the first server's connection", info.Conn.RemoteAddr())
			return
		}
		go first.GracefulStop() // a GOAWAY, then a PING
		select {
		case <-watch.acked:
		case <-time.After(10 * time.Second):
			t.Errorf("the transport did not answer the PING after the stopping server's GOAWAY in 10s")
		}
	}})
	ok("the call placed on the stopping server's connection", call(ctx))
	if !placed {
		t.Fatal("GotConn never ran: the call proves nothing")
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2: the call went on the connection the pool held", n)
	}
}

package outbound

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// staleConn stands for a kept upstream connection the upstream reset
// while it was idle, found as a request was about to be written on it,
// before Go's read loop saw the reset: its write fails with nothing
// written (EPIPE), and the connection is gone. The first stale writes
// after the warm-up (on whichever connections they fall) are stale.
type staleConn struct {
	net.Conn
	stale *atomic.Int32
}

func (c *staleConn) Write(p []byte) (int, error) {
	if c.stale.Add(-1) >= 0 {
		c.Conn.Close()
		return 0, &net.OpError{Op: "write", Net: "tcp", Addr: c.RemoteAddr(), Err: syscall.EPIPE}
	}
	return c.Conn.Write(p)
}

// TestStdTransportStaleKeptConnsPassedOver: on Go's transport, kept
// connections on which a try wrote nothing never count against the one
// replay a try allows, however many in a row: a GET goes on the next
// connection until one takes it (it failed at the third with
// errReplayedOnce, the upstream never having seen it). Tries that wrote,
// on connections the upstream closed after reading the request, still
// run it at most twice.
func TestStdTransportStaleKeptConnsPassedOver(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stale    int32 // writes that fail with nothing written
		crash    bool  // the upstream reads /crash and closes without an answer
		wantCode int
		wantRuns int32 // /crash requests the upstream read
	}{
		{"two stale", 2, false, http.StatusOK, 1},
		{"three stale", 3, false, http.StatusOK, 1},
		{"every kept one stale", 4, false, http.StatusOK, 1},
		{"crash on each kept one", 0, true, http.StatusBadGateway, 2},
		{"two stale, then crash on each", 2, true, http.StatusBadGateway, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const warm = 4
			var runs atomic.Int32
			var arrived sync.WaitGroup
			arrived.Add(warm)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						br := bufio.NewReader(c)
						for {
							req, err := http.ReadRequest(br)
							if err != nil {
								return
							}
							if req.URL.Path == "/crash" {
								runs.Add(1)
								if tc.crash {
									return
								}
							} else {
								// Each warm request on a connection of its own.
								arrived.Done()
								arrived.Wait()
							}
							_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
						}
					}()
				}
			}()
			pols, err := policy.Decode("p.yaml", []byte(`apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: geo}
spec:
  service: geo-service
  timeout: 5s
`))
			if err != nil {
				t.Fatal(err)
			}
			h := New(Config{Metrics: telemetry.New(0), Namespace: "shop", StdTransport: true,
				Resolve: map[string]string{"geo-service:8000": ln.Addr().String()}}, policy.NewTable(pols, "shop"))
			var stale atomic.Int32 // none until the warm-up is done
			var dials atomic.Int32
			h.dialer.connect = func(ctx context.Context, nd *net.Dialer, network, addr string) (net.Conn, error) {
				c, err := nd.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				dials.Add(1)
				return &staleConn{Conn: c, stale: &stale}, nil
			}
			px := httptest.NewServer(h)
			defer px.Close()
			pu, _ := url.Parse(px.URL)
			c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
			defer c.CloseIdleConnections()
			get := func(path string) int {
				resp, err := c.Get("http://geo-service:8000" + path)
				if err != nil {
					t.Error(err)
					return 0
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}
			var wg sync.WaitGroup
			for range warm {
				wg.Go(func() {
					if code := get("/warm"); code != http.StatusOK {
						t.Errorf("warm: %d", code)
					}
				})
			}
			wg.Wait()
			if n := dials.Load(); n != warm {
				t.Fatalf("%d upstream connections after the warm-up, want %d", n, warm)
			}
			stale.Store(tc.stale)
			if code := get("/crash"); code != tc.wantCode {
				t.Errorf("status %d, want %d", code, tc.wantCode)
			}
			if got := runs.Load(); got != tc.wantRuns {
				t.Errorf("the upstream read /crash %d times, want %d", got, tc.wantRuns)
			}
			if left := stale.Load(); left > 0 {
				t.Errorf("%d stale connections never tried", left)
			}
		})
	}
}

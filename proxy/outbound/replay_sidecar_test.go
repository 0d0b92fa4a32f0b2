package outbound_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// crashUpstream answers /warm once warm requests have arrived together,
// each on a connection of its own, and drops /crash without an answer
// after reading it, as an upstream that crashes on it; runs counts the
// /crash requests read.
func crashUpstream(t *testing.T, warm int) (string, *atomic.Int32, *atomic.Int32) {
	var runs atomic.Int32
	var arrived sync.WaitGroup
	arrived.Add(warm)
	addr, conns := proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/crash" {
				runs.Add(1)
				return
			}
			arrived.Done()
			arrived.Wait()
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	return addr, conns, &runs
}

// TestSidecarCrashOnRequestSentAtMostTwice: through the sidecar, on
// either transport, a GET the upstream drops without an answer after
// reading it is sent at most twice by one try (no retry policy): Go's
// transport sent it once per kept connection, the fast one on each kept
// connection then a new one (5 runs with 4 kept).
func TestSidecarCrashOnRequestSentAtMostTwice(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  sidecarOpt
	}{
		{"std transport", withStdTransport()},
		{"fast transport", withFastTransport()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const warm = 4
			addr, conns, runs := crashUpstream(t, warm)
			sc := startSidecar(t, policyDoc("geo", "geo-service", "timeout: 5s"), resolve(addr, geo), tc.opt)
			c := sc.Client()
			var wg sync.WaitGroup
			for range warm {
				wg.Go(func() {
					resp, err := c.Get("http://" + geo + "/warm")
					if err != nil {
						t.Errorf("warm: %v", err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				})
			}
			wg.Wait()
			if n := conns.Load(); n != warm {
				t.Fatalf("%d upstream connections after the warm-up, want %d", n, warm)
			}
			resp, err := c.Get("http://" + geo + "/crash")
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("status %d, want 502", resp.StatusCode)
			}
			if got := runs.Load(); got < 1 || got > 2 {
				t.Errorf("the upstream ran /crash %d times, want 1 or 2", got)
			}
		})
	}
}

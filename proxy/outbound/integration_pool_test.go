package outbound_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newCountingUpstream counts the TCP connections the upstream accepts.
func newCountingUpstream(t *testing.T, delay time.Duration) (*httptest.Server, *atomic.Int64, *atomic.Int64) {
	t.Helper()
	var conns, hits atomic.Int64
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		time.Sleep(delay)
		_, _ = w.Write([]byte("pooled response body"))
	}))
	ts.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	ts.Start()
	t.Cleanup(ts.Close)
	return ts, &conns, &hits
}

// TestPoolSequential: 200 sequential requests to one upstream reuse a
// kept-alive connection instead of opening one each.
func TestPoolSequential(t *testing.T) {
	ts, conns, hits := newCountingUpstream(t, 0)
	sc := startSidecar(t, "", resolve(ts.Listener.Addr().String(), geo))
	c := sc.Client()
	for i := range 200 {
		resp, body := get(t, c, "http://"+geo+"/")
		if resp.StatusCode != http.StatusOK || string(body) != "pooled response body" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if got := hits.Load(); got != 200 {
		t.Fatalf("upstream saw %d requests, want 200", got)
	}
	if got := conns.Load(); got > 2 {
		t.Fatalf("200 sequential requests opened %d upstream connections, want <= 2", got)
	}
}

// TestPoolConcurrentWaves: three waves of 50 concurrent requests reuse
// the connections the first wave opened (Go's default would keep only 2
// idle per host and open most of them again).
func TestPoolConcurrentWaves(t *testing.T) {
	ts, conns, hits := newCountingUpstream(t, 20*time.Millisecond)
	sc := startSidecar(t, "", resolve(ts.Listener.Addr().String(), geo))
	c := sc.Client()
	for wave := range 3 {
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				resp, err := c.Get("http://" + geo + "/")
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("wave %d: status %d", wave, resp.StatusCode)
				}
			})
		}
		wg.Wait()
	}
	if got := hits.Load(); got != 150 {
		t.Fatalf("upstream saw %d requests, want 150", got)
	}
	if got := conns.Load(); got > 60 {
		t.Fatalf("3 waves of 50 opened %d upstream connections, want <= 60", got)
	}
}

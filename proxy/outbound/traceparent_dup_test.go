package outbound_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

// TestDoubledTraceparentOutbound: an app's request with two traceparent
// fields starts a new trace (W3C Trace Context; telemetry's
// TestDoubledTraceparentStartsNewTrace): the upstream gets one
// traceparent, of neither of the app's traces, none of the app's
// tracestate, and the app's request ID as it was; on the lean server's
// fast path and on http.Transport, at sample ratios 0 and 1.
func TestDoubledTraceparentOutbound(t *testing.T) {
	const tid1, tid2 = "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"
	for _, tr := range []struct {
		name string
		opts []sidecarOpt
	}{
		{"lean-fast", []sidecarOpt{withServer(sidecar.ServerLean), withFastTransport()}},
		{"std", []sidecarOpt{withServer(sidecar.ServerStd), withStdTransport()}},
	} {
		for _, ratio := range []float64{0, 1} {
			t.Run(tr.name, func(t *testing.T) {
				var mu sync.Mutex
				var got http.Header
				up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
					mu.Lock()
					got = r.Header.Clone()
					mu.Unlock()
				})
				opts := append(tr.opts, func(cfg *sidecar.Config) {
					cfg.OTLPEndpoint, cfg.TraceSampleRatio = "127.0.0.1:1", ratio // spans made, then dropped
				})
				sc := startSidecar(t, "", resolve(up.Host(), geo), opts...)
				c, err := net.Dial("tcp", sc.Addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(c, "GET http://"+geo+"/x HTTP/1.1\r\nHost: "+geo+"\r\n"+
					"Traceparent: 00-"+tid1+"-00f067aa0ba902b7-01\r\nTraceparent: 00-"+tid2+"-00f067aa0ba902b7-01\r\n"+
					"Tracestate: congo=t61rcWkgMzE\r\nX-Request-ID: app-request-1\r\n\r\n")
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("X-Request-ID") != "app-request-1" {
					t.Fatalf("answer %v %v", resp, err)
				}
				mu.Lock()
				defer mu.Unlock()
				tp := got.Values("Traceparent")
				if len(tp) != 1 || strings.Contains(tp[0], tid1) || strings.Contains(tp[0], tid2) || len(tp[0]) != 55 {
					t.Errorf("ratio %v: upstream got traceparent %q, want one of a new trace", ratio, tp)
				}
				if ts := got.Values("Tracestate"); len(ts) != 0 {
					t.Errorf("ratio %v: upstream got the abandoned trace's tracestate %q", ratio, ts)
				}
				if id := got.Values("X-Request-Id"); len(id) != 1 || id[0] != "app-request-1" {
					t.Errorf("ratio %v: upstream got request ID %q, want the app's", ratio, id)
				}
				if b3 := got.Get("X-B3-Traceid"); len(tp) == 1 && !strings.Contains(tp[0], b3) {
					t.Errorf("ratio %v: B3 trace %q is not the traceparent's %q", ratio, b3, tp[0])
				}
			})
		}
	}
}

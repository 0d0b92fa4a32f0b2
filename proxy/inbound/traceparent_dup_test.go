package inbound

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestDoubledTraceparentInbound: a caller's request with two traceparent
// fields starts a new trace (W3C Trace Context; telemetry's
// TestDoubledTraceparentStartsNewTrace): the app gets one traceparent,
// of neither of the caller's traces, none of its tracestate, and the
// caller's request ID as it was, at sample ratios 0 and 1.
func TestDoubledTraceparentInbound(t *testing.T) {
	const tid1, tid2 = "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"
	for _, ratio := range []float64{0, 1} {
		tr, err := telemetry.NewTracing(telemetry.TracingConfig{Endpoint: "127.0.0.1:1", SampleRatio: ratio, ServiceName: "tenant"}, telemetry.New(0))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = tr.Shutdown(ctx)
		})
		r := newRig(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), Config{Tracing: tr})
		req, _ := http.NewRequest(http.MethodGet, "http://"+r.front+"/x", nil)
		req.Header["Traceparent"] = []string{"00-" + tid1 + "-00f067aa0ba902b7-01", "00-" + tid2 + "-00f067aa0ba902b7-01"}
		req.Header.Set("Tracestate", "congo=t61rcWkgMzE")
		req.Header.Set("X-Request-ID", "caller-1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := (<-r.seen).Header
		tp := got.Values("Traceparent")
		if len(tp) != 1 || strings.Contains(tp[0], tid1) || strings.Contains(tp[0], tid2) {
			t.Errorf("ratio %v: the app got traceparent %q, want one of a new trace", ratio, tp)
		}
		if ts := got.Values("Tracestate"); len(ts) != 0 {
			t.Errorf("ratio %v: the app got the abandoned trace's tracestate %q", ratio, ts)
		}
		if id := got.Values("X-Request-Id"); len(id) != 1 || id[0] != "caller-1" || resp.Header.Get("X-Request-ID") != "caller-1" {
			t.Errorf("ratio %v: request ID %q (answer %q), want the caller's", ratio, id, resp.Header.Get("X-Request-ID"))
		}
	}
}

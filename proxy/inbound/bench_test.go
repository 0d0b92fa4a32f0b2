package inbound

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/minimesh/minimesh/proxy/telemetry"
)

// BenchmarkInboundGET is one keep-alive GET into the pod through the
// inbound handler to the app, caller and app included (compare with the
// outbound package's BenchmarkDirectGET for the sidecar's share): request
// ID made, metrics, no access log, no tracing.
func BenchmarkInboundGET(b *testing.B) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))
	defer app.Close()
	orig := netip.MustParseAddrPort(app.Listener.Addr().String())
	h := New(Config{Metrics: telemetry.New(0), LocalAddr: loopbackIsLocal, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	front := httptest.NewUnstartedServer(h)
	front.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context { return h.WithOriginalDst(ctx, orig) }
	front.Start()
	defer front.Close()
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	b.ReportAllocs()
	for b.Loop() {
		resp, err := c.Get(front.URL + "/")
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatal(resp.Status)
		}
	}
}

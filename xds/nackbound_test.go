package xds

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// TestLongNackReachesServer: a sidecar that refuses a response with a
// reason longer than the server takes in a request (MaxRequestBytes) still
// NACKs it: the reason is cut (xdsclient.MaxNackMessage) and the server
// hears the NACK, on the same stream. Before, the NACK carried the whole
// reason, the server refused the request and ended the stream, and the
// sidecar reconnected to be sent, and refuse, the same again.
func TestLongNackReachesServer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logged safeBuffer
	reg := prometheus.NewRegistry()
	s := NewServer(ctx, Callbacks(slog.New(slog.NewTextHandler(&logged, nil)), reg))
	if err := s.Set(meshWide(t), nil); err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s, "127.0.0.1:0")
	defer stop()
	reason := strings.Repeat("a cluster this sidecar cannot take; ", MaxRequestBytes/30)
	c := &xdsclient.Client{Addr: addr, Node: xdsclient.Node("pod", "shop", "web"),
		Apply:      func([]*policy.ResiliencePolicy, string) error { return errors.New(reason) },
		Log:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	cctx, stopClient := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { c.Run(cctx); close(done) }()
	defer func() { stopClient(); <-done }()
	waitFor(t, "the NACK counted", func() bool { return gauge(t, reg, "minimesh_xds_nacks_total") >= 1 })
	if !strings.Contains(logged.String(), "a cluster this sidecar cannot take") {
		t.Errorf("the NACK's reason is not in the server's log: %s", logged.String())
	}
}

package outbound

import (
	"testing"
	"time"
)

// grpcPermitKeepAliveTime is the least time between a client's PINGs
// that gRPC servers take by default (grpc-go's keepalive
// EnforcementPolicy.MinTime, grpc-java's permitKeepAliveTime, C++'s
// GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS): 5 minutes.
// Sooner is a strike, and three end the connection (GOAWAY
// ENHANCE_YOUR_CALM "too_many_pings").
const grpcPermitKeepAliveTime = 5 * time.Minute

// TestH2UpstreamPings: the sidecar pings an upstream no sooner than gRPC
// servers allow. Go's transport sends a PING after SendPingTimeout
// without a frame, and again that long after the answer: at 30 s (before
// 2026-12-07) a grpc-go server closed the connection of a quiet call after
// about 2 minutes, failing it UNAVAILABLE. An app's connection to the
// sidecar keeps its 30 s: clients do not police PINGs.
func TestH2UpstreamPings(t *testing.T) {
	up := newH2CTransport(nil).HTTP2
	if up.SendPingTimeout <= grpcPermitKeepAliveTime {
		t.Errorf("upstream PING after %v without a frame, want more than gRPC's %v", up.SendPingTimeout, grpcPermitKeepAliveTime)
	}
	if up.PingTimeout != H2PingTimeout {
		t.Errorf("upstream PING answered within %v, want %v", up.PingTimeout, H2PingTimeout)
	}
	if app := ServerHTTP2(); app.SendPingTimeout != H2ReadIdleTimeout {
		t.Errorf("app connections PING after %v, want %v", app.SendPingTimeout, H2ReadIdleTimeout)
	}
}

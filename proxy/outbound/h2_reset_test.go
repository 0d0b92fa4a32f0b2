package outbound_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/proxy/outbound"
)

// TestH2ResetNotResent: a POST, or a gRPC unary call, that the upstream
// read whole and then reset (PROTOCOL_ERROR, which does not say it did
// nothing) is sent once, with a body held for retries: a non-idempotent
// request is the try loop's to decide, and it does not retry it. Go's
// HTTP/2 transport resends such a request by itself when it has
// Request.GetBody; given one, the upstream got thousands of copies
// (docs/grpc.md, "Retries").
func TestH2ResetNotResent(t *testing.T) {
	for _, tc := range []struct {
		name, policy, path, ctype, body string
	}{
		{"POST", "timeout: 2s\nretries:\n  attempts: 2\n", "/charge", "text/plain", "charge card 42"},
		{"gRPC unary", "timeout: 2s\nretries:\n  attempts: 2\n  retryOn: [grpc-unavailable]\n", "/pay.Payments/Charge", "application/grpc", "\x00\x00\x00\x00\x02hi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, streams, _ := outbound.ResettingH2Upstream(t)
			const svc = "orders:8080"
			sc := startSidecar(t, policyDoc("orders", svc, tc.policy), resolve(addr, svc))
			req, err := http.NewRequest(http.MethodPost, "http://"+sc.Addr+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Host = svc
			req.Header.Set("Content-Type", tc.ctype)
			req.Header.Set("Te", "trailers")
			resp, err := h2cClient(t).Transport.RoundTrip(req)
			if err != nil {
				t.Fatalf("the app got no answer: %v", err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if got := resp.Header.Get("X-Minimesh-Error"); got != "reset" {
				t.Errorf("answer %d, X-Minimesh-Error %q: want the sidecar's reset", resp.StatusCode, got)
			}
			if n := streams.Load(); n != 1 {
				t.Errorf("the upstream was sent the request %d times, want once", n)
			}
		})
	}
}

// TestH2ResetRedialBounded: a bodiless GET whose stream the upstream
// resets with PROTOCOL_ERROR on every connection opens a bounded number
// of connections, not one after another for as long as the request lives:
// Go's transport takes such a reset for a broken connection and dials
// again with no pause (3,351 connections in a second for one GET before).
// The try fails as the reset it is, and the policy's one retry (a GET)
// gets a bound of its own (docs/grpc.md, "Retries").
func TestH2ResetRedialBounded(t *testing.T) {
	addr, streams, conns := outbound.ResettingH2Upstream(t)
	const svc = "orders:8080"
	sc := startSidecar(t, policyDoc("orders", svc, "timeout: 2s\nretries:\n  attempts: 1\n  retryOn: [reset]\n"), resolve(addr, svc))
	req, err := http.NewRequest(http.MethodGet, "http://"+sc.Addr+"/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = svc
	resp, err := h2cClient(t).Transport.RoundTrip(req)
	if err != nil {
		t.Fatalf("the app got no answer: %v", err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("X-Minimesh-Error"); resp.StatusCode != http.StatusBadGateway || got != "reset" {
		t.Errorf("answer %d %q, want 502 reset", resp.StatusCode, got)
	}
	// Two tries, each at most two connections (and a stream on each, or
	// two on a connection the transport had cached).
	if n := conns.Load(); n > 4 {
		t.Errorf("%d connections opened for one GET (%d streams), want at most 4", n, streams.Load())
	}
}

package grpc

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// These tests are a grpc-go app configured only with HTTPS_PROXY pointing
// at the sidecar, as an app that honours the proxy variables is: grpc-go
// reads HTTPS_PROXY alone and tunnels each connection through CONNECT. The
// sidecar sees an opaque tunnel, so it counts a tunnel, not requests
// (docs/grpc.md, "CONNECT tunnels"; docs/metrics.md).

// proxyClientEnv runs this test binary as the app (TestProxyClientHelper):
// net/http reads the proxy variables once per process, so the app is a
// process of its own with HTTPS_PROXY set.
const proxyClientEnv = "GRPC_E2E_PROXY_CLIENT"

// proxyClient runs calls Check calls to svc in a grpc-go process whose
// HTTPS_PROXY is the sidecar, each on a new channel (so a new tunnel) when
// fresh, else all on one, and returns each call's gRPC code.
func proxyClient(t *testing.T, s *sidecar, calls int, fresh bool) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestProxyClientHelper$", "-test.count=1")
	cmd.Env = append(childEnv(), proxyClientEnv+"=1", "HTTPS_PROXY=http://"+s.Outbound,
		"GRPC_E2E_CALLS="+strconv.Itoa(calls), "GRPC_E2E_FRESH="+strconv.FormatBool(fresh))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("grpc-go client through HTTPS_PROXY: %v\n%s", err, out)
	}
	var codes []string
	for _, l := range strings.Split(string(out), "\n") {
		if c, ok := strings.CutPrefix(l, "CALL "); ok {
			codes = append(codes, c)
		}
	}
	if len(codes) != calls {
		t.Fatalf("grpc-go client printed %q, want %d calls", out, calls)
	}
	return codes
}

// TestProxyClientHelper is the app of proxyClient, run only in its process.
func TestProxyClientHelper(t *testing.T) {
	if os.Getenv(proxyClientEnv) != "1" {
		t.Skip("the app process of the HTTPS_PROXY tests")
	}
	calls, _ := strconv.Atoi(os.Getenv("GRPC_E2E_CALLS"))
	fresh := os.Getenv("GRPC_E2E_FRESH") == "true"
	var cc *grpc.ClientConn
	for i := 0; i < calls; i++ {
		if cc == nil {
			var err error
			// dns:/// with a proxy: grpc-go does not resolve the name, it
			// sends it in the CONNECT (the sidecar resolves it). A fixed
			// window turns grpc-go's BDP pings off: with them the channel
			// pings after a response, and when the ack arrives after
			// Close its kernel resets the tunnel, a real reset the
			// sidecar counts as result="reset" (docs/grpc.md, "CONNECT
			// tunnels"); these tests want the orderly end.
			if cc, err = grpc.NewClient("dns:///"+svc, grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20)); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		fmt.Printf("CALL %s\n", status.Code(err))
		if err != nil {
			fmt.Printf("error: %v\n", err)
		}
		if fresh {
			cc.Close()
			cc = nil
		}
	}
	if cc != nil {
		cc.Close()
	}
}

// waitMetric polls the sidecar's metric until it is want.
func (s *sidecar) waitMetric(t *testing.T, want float64, name string, labels ...string) {
	t.Helper()
	var got float64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if got = s.metric(t, name, labels...); got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want %v; the family now:\n%s", name, labels, got, want, s.family(t, name))
		}
	}
}

// TestHTTPSProxyTunnel: grpc-go's calls through HTTPS_PROXY work through
// the sidecar's CONNECT tunnel, and the sidecar counts one tunnel (ok,
// with its bytes), not requests: it cannot see the calls inside.
func TestHTTPSProxyTunnel(t *testing.T) {
	s := startSidecar(t, serve(t, health.NewServer()), "")
	for i, c := range proxyClient(t, s, 3, false) {
		if c != "OK" {
			t.Errorf("call %d through the tunnel: %s, want OK", i+1, c)
		}
	}
	s.waitMetric(t, 1, "minimesh_tcp_connections_total", "direction", "outbound", "destination", svc, "result", "ok")
	if got := s.metric(t, "minimesh_tcp_connections_total", "destination", svc); got != 1 {
		t.Errorf("minimesh_tcp_connections_total{destination=%s} = %v, want the one tunnel of the channel", svc, got)
	}
	if sent, received := s.metric(t, "minimesh_tcp_sent_bytes_total", "direction", "outbound", "destination", svc),
		s.metric(t, "minimesh_tcp_received_bytes_total", "direction", "outbound", "destination", svc); sent == 0 || received == 0 {
		t.Errorf("tunnel bytes sent %v, received %v: want both counted", sent, received)
	}
	for _, name := range []string{"minimesh_requests_total", "minimesh_grpc_requests_total"} {
		if got := s.metric(t, name, "destination", svc); got != 0 {
			t.Errorf("%s{destination=%s} = %v, want 0: a tunnel is not a request", name, svc, got)
		}
	}
}

// TestHTTPSProxyTunnelDeadPort: a tunnel to a port nothing listens on is
// result="connect-failure" and a failure for the breaker: after the third,
// the breaker is open and the fourth tunnel is refused at once
// (circuit-open). grpc-go sees UNAVAILABLE each time.
func TestHTTPSProxyTunnelDeadPort(t *testing.T) {
	s := startSidecar(t, refused.Addr(t), breakerPolicy)
	for i, c := range proxyClient(t, s, 4, true) {
		if c != "Unavailable" {
			t.Errorf("call %d to a dead port: %s, want Unavailable", i+1, c)
		}
	}
	s.waitMetric(t, 3, "minimesh_tcp_connections_total", "direction", "outbound", "destination", svc, "result", "connect-failure")
	if got := s.metric(t, "minimesh_tcp_connections_total", "destination", svc, "result", "circuit-open"); got != 1 {
		t.Errorf("minimesh_tcp_connections_total{result=circuit-open} = %v, want 1", got)
	}
	if got := s.metric(t, "minimesh_circuit_breaker_rejected_total", "destination", svc); got != 1 {
		t.Errorf("minimesh_circuit_breaker_rejected_total = %v, want 1", got)
	}
	if got := s.metric(t, "minimesh_circuit_breaker_state", "destination", svc, "state", "open"); got != 1 {
		t.Errorf("minimesh_circuit_breaker_state{state=open} = %v, want 1", got)
	}
	if got := s.metric(t, "minimesh_requests_total", "destination", svc); got != 0 {
		t.Errorf("minimesh_requests_total{destination=%s} = %v, want 0", svc, got)
	}
}

// family is the lines of the sidecar's metric family name, for a failure
// to show what was counted instead.
func (s *sidecar) family(t *testing.T, name string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + s.Admin + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+"{") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

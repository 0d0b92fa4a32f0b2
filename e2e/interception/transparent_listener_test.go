package interception_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcstatus "google.golang.org/grpc/status"
)

// unavailableHealth fails every Check with UNAVAILABLE.
type unavailableHealth struct {
	healthpb.UnimplementedHealthServer
	hits *atomic.Int64
}

func (s unavailableHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	s.hits.Add(1)
	return nil, grpcstatus.Error(codes.Unavailable, "failing on purpose")
}

// policies of TestTransparentListener: two breakers that open on the
// second failure, one for an HTTP destination and one for a TLS one named
// by its SNI.
const transparentPolicies = `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: failing}
spec:
  service: failing.test:8081
  circuitBreaker: {consecutiveFailures: 2, openTimeout: 60s}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: down}
spec:
  service: down.test:8444
  circuitBreaker: {consecutiveFailures: 2, openTimeout: 60s}
---
apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: grpc}
spec:
  service: grpc.test:50051
  circuitBreaker: {consecutiveFailures: 2, openTimeout: 60s}
`

// TestTransparentListener: clients in a pod that know nothing of a proxy
// (curl, a Go program with its own http.Transport, raw TCP, curl https://)
// go through the sidecar that iptables redirects them to, and the
// sidecar's own connections do not come back to it.
func TestTransparentListener(t *testing.T) {
	bin := needTransparent(t)
	w := newWorld(t, bin, transparentPolicies)
	web := w.httpUpstream(":8080", 200, false)
	failing := w.httpUpstream(":8081", 500, false)
	h2 := w.httpUpstream(":8082", 200, true)
	echo := w.tcpUpstream(":7000", "")
	pg := w.tcpUpstream(":5432", "220 server speaks first\r\n")
	late := w.tcpUpstream(":7001", "220 server speaks first\r\n")
	secure := w.tlsUpstream(":8443", "secure.test")

	// once checks that the upstream saw exactly one request at path, from
	// the sidecar (the pod's address, X-Request-ID, Via), and returns it.
	once := func(u *httpUpstream, path string) seen {
		t.Helper()
		rs := u.requests(path)
		if len(rs) != 1 {
			t.Fatalf("upstream saw %d requests at %s, want 1: %+v", len(rs), path, rs)
		}
		r := rs[0]
		if r.RequestID == "" || !strings.HasPrefix(r.Via, "1.1 minimesh-") {
			t.Errorf("%s reached the upstream without the sidecar: %+v", path, r)
		}
		if strings.Count(r.Via, "minimesh") != 1 {
			t.Errorf("%s went through the sidecar more than once: Via %q", path, r.Via)
		}
		return r
	}

	t.Run("curl", func(t *testing.T) {
		before := web.ln.n.Load()
		code, errOut, err := w.curl("-o", "/dev/null", "-w", "%{http_code}", "http://"+upIP+":8080/curl")
		if err != nil || code != "200" {
			t.Fatalf("curl: %s %v %s", code, err, errOut)
		}
		r := once(web, "/curl")
		if !strings.HasPrefix(r.Remote, podIP+":") {
			t.Errorf("upstream saw the request from %s", r.Remote)
		}
		if n := web.ln.n.Load() - before; n != 1 {
			t.Errorf("upstream accepted %d connections for one call", n)
		}
		w.accessLine(map[string]any{"path": "/curl", "destination": upIP + ":8080", "original_dst": upIP + ":8080", "status": 200, "request_id": r.RequestID})
		w.debugLine(map[string]any{"protocol": "http1", "original_dst": upIP + ":8080"})
	})

	t.Run("curl by name", func(t *testing.T) {
		// The name resolves in curl only; the sidecar dials the address
		// curl connected to and names the destination by Host.
		code, errOut, err := w.curl("-o", "/dev/null", "-w", "%{http_code}", "--resolve", "geo.test:8080:"+upIP, "http://geo.test:8080/named")
		if err != nil || code != "200" {
			t.Fatalf("curl: %s %v %s", code, err, errOut)
		}
		once(web, "/named")
		w.accessLine(map[string]any{"path": "/named", "destination": "geo.test:8080", "original_dst": upIP + ":8080"})
	})

	t.Run("go transport", func(t *testing.T) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestTransparentGoClient$", "-test.v")
		cmd.Env = []string{"MM_TRANSPARENT_URL=http://" + upIP + ":8080/go"}
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := inNetns(w.pod.name, cmd.Start); err != nil { // no Pdeathsig: Wait below
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("Go client: %v\n%s", err, out.String())
		}
		r := once(web, "/go")
		if !strings.Contains(out.String(), "status 200 request-id "+r.RequestID) {
			t.Errorf("Go client's answer does not carry the upstream's request ID %s:\n%s", r.RequestID, out.String())
		}
	})

	t.Run("http breaker", func(t *testing.T) {
		var codes []string
		for range 3 {
			out, errOut, err := w.curl("-o", "/dev/null", "-w", "%{http_code} %header{x-minimesh-error}", "--resolve", "failing.test:8081:"+upIP, "http://failing.test:8081/f")
			if err != nil {
				t.Fatalf("curl: %v %s", err, errOut)
			}
			codes = append(codes, strings.TrimSpace(out))
		}
		if want := []string{"500", "500", "503 circuit-open"}; fmt.Sprint(codes) != fmt.Sprint(want) {
			t.Errorf("answers %q, want %q", codes, want)
		}
		if n := len(failing.requests("/f")); n != 2 {
			t.Errorf("failing upstream saw %d requests, want 2 (the third fails fast)", n)
		}
		w.waitMetric(`minimesh_circuit_breaker_rejected_total{destination="failing.test:8081"}`, 1)
	})

	t.Run("tcp", func(t *testing.T) {
		c := w.dial(upIP + ":7000")
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		_ = c.(*net.TCPConn).CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "hellobye" {
			t.Fatalf("read %q, %v", got, err)
		}
		if n := echo.n.Load(); n != 1 {
			t.Errorf("TCP upstream accepted %d connections, want 1", n)
		}
		w.waitMetric(`minimesh_tcp_connections_total{destination="`+upIP+`:7000",direction="outbound",result="ok"}`, 1)
		w.waitMetric(`minimesh_tcp_sent_bytes_total{destination="`+upIP+`:7000",direction="outbound"}`, 5)
		w.waitMetric(`minimesh_tcp_received_bytes_total{destination="`+upIP+`:7000",direction="outbound"}`, 8)
		w.accessLine(map[string]any{"destination": upIP + ":7000", "protocol": "unknown", "bytes_in": 5, "bytes_out": 8})
	})

	t.Run("server speaks first", func(t *testing.T) {
		// On an opaque port the greeting comes at once; elsewhere after
		// the detection timeout, but it comes.
		for _, c := range []struct {
			port  string
			ln    *counting
			proto string
			max   time.Duration
		}{{"5432", pg, "opaque-port", 500 * time.Millisecond}, {"7001", late, "no-data", 5 * time.Second}} {
			conn := w.dial(upIP + ":" + c.port)
			start := time.Now()
			_ = conn.SetReadDeadline(start.Add(c.max))
			buf := make([]byte, len("220 server speaks first\r\n"))
			if _, err := io.ReadFull(conn, buf); err != nil {
				t.Fatalf("port %s: greeting not read within %v: %v", c.port, c.max, err)
			}
			t.Logf("port %s: greeting after %v", c.port, time.Since(start))
			conn.Close()
			w.accessLine(map[string]any{"destination": upIP + ":" + c.port, "protocol": c.proto})
		}
	})

	t.Run("tls", func(t *testing.T) {
		out, errOut, err := w.curl("--cacert", w.ca, "--resolve", "secure.test:8443:"+upIP, "https://secure.test:8443/tls")
		if err != nil || strings.TrimSpace(out) != "tls ok" {
			t.Fatalf("curl https: %q %v %s", out, err, errOut)
		}
		if rs := secure.requests("/tls"); len(rs) != 1 || rs[0].RequestID != "" {
			t.Errorf("TLS upstream saw %+v, want one request the sidecar could not touch", rs)
		}
		if n := secure.ln.n.Load(); n != 1 {
			t.Errorf("TLS upstream accepted %d connections", n)
		}
		w.accessLine(map[string]any{"destination": "secure.test:8443", "protocol": "tls", "sni": "secure.test", "original_dst": upIP + ":8443"})
		w.debugLine(map[string]any{"protocol": "tls", "sni": "secure.test"})
		w.waitMetric(`minimesh_tcp_connections_total{destination="secure.test:8443",direction="outbound",result="ok"}`, 1)
	})

	t.Run("tls breaker", func(t *testing.T) {
		// Nothing listens on 8444: connects are refused; the second opens
		// down.test's breaker and the third is reset without a dial.
		for i := range 3 {
			start := time.Now()
			_, _, err := w.curl("--cacert", w.ca, "--resolve", "down.test:8444:"+upIP, "https://down.test:8444/")
			if err == nil {
				t.Fatalf("call %d to a closed port succeeded", i)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("call %d took %v", i, d)
			}
		}
		w.waitMetric(`minimesh_tcp_connections_total{destination="down.test:8444",direction="outbound",result="connect-failure"}`, 2)
		w.waitMetric(`minimesh_tcp_connections_total{destination="down.test:8444",direction="outbound",result="circuit-open"}`, 1)
		w.waitMetric(`minimesh_circuit_breaker_rejected_total{destination="down.test:8444"}`, 1)
		w.accessLine(map[string]any{"destination": "down.test:8444", "error": "circuit-open", "sni": "down.test"})
	})

	t.Run("tcp breaker", func(t *testing.T) {
		// The default policy: open on the fifth refused connect.
		for range 6 {
			c := w.dial(upIP + ":7999")
			_, _ = c.Write([]byte{0}) // detected at once (unknown), not after the timeout
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
				t.Fatalf("read %d, %v from a relay to a closed port", n, err)
			}
			c.Close()
		}
		w.waitMetric(`minimesh_tcp_connections_total{destination="`+upIP+`:7999",direction="outbound",result="connect-failure"}`, 5)
		w.waitMetric(`minimesh_tcp_connections_total{destination="`+upIP+`:7999",direction="outbound",result="circuit-open"}`, 1)
	})

	t.Run("h2 prior knowledge", func(t *testing.T) {
		// The preface sends the connection to the L7 path as HTTP/2, and
		// the request goes upstream over h2c (docs/grpc.md).
		out, errOut, err := w.curl("--http2-prior-knowledge", "http://"+upIP+":8082/h2")
		if err != nil || strings.TrimSpace(out) != "HTTP/2.0 200" {
			t.Fatalf("curl --http2-prior-knowledge: %q %v %s", out, err, errOut)
		}
		once(h2, "/h2")
		w.accessLine(map[string]any{"destination": upIP + ":8082", "path": "/h2", "status": 200})
	})

	t.Run("grpc", func(t *testing.T) {
		// A grpc-go client in the pod dials the upstream's address, no
		// proxy configured; its server fails with UNAVAILABLE. The second
		// failure opens grpc.test's breaker (named by :authority on the
		// port dialled) and the third call is UNAVAILABLE from minimesh
		// without reaching the server.
		var hits atomic.Int64
		gs := grpc.NewServer()
		healthpb.RegisterHealthServer(gs, unavailableHealth{hits: &hits})
		go func() { _ = gs.Serve(w.up.listen(t, ":50051")) }()
		t.Cleanup(gs.Stop)
		cc, err := grpc.NewClient("passthrough:///"+upIP+":50051", grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithAuthority("grpc.test"), grpc.WithNoProxy(),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (c net.Conn, err error) {
				err = inNetns(w.pod.name, func() (err error) {
					c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
					return err
				})
				return c, err
			}))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		c := healthpb.NewHealthClient(cc)
		for i := 1; i <= 3; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
			cancel()
			msg := grpcstatus.Convert(err).Message()
			if grpcstatus.Code(err) != codes.Unavailable || strings.Contains(msg, "minimesh") != (i == 3) {
				t.Fatalf("call %d: %v; want Unavailable, from minimesh only on the third", i, err)
			}
		}
		if n := hits.Load(); n != 2 {
			t.Errorf("the server saw %d calls, want 2", n)
		}
		w.waitMetric(`minimesh_grpc_requests_total{destination="grpc.test:50051",direction="outbound",grpc_code="UNAVAILABLE"}`, 3)
		w.waitMetric(`minimesh_circuit_breaker_rejected_total{destination="grpc.test:50051"}`, 1)
	})

	t.Run("ipv6", func(t *testing.T) {
		code, errOut, err := w.curl("-g", "-o", "/dev/null", "-w", "%{http_code}", "http://["+upIP6+"]:8080/v6")
		if err != nil || code != "200" {
			t.Fatalf("curl over IPv6: %s %v %s", code, err, errOut)
		}
		r := once(web, "/v6")
		if !strings.HasPrefix(r.Remote, "["+podIP6+"]:") {
			t.Errorf("upstream saw the request from %s", r.Remote)
		}
		w.accessLine(map[string]any{"path": "/v6", "original_dst": "[" + upIP6 + "]:8080"})
	})

	t.Run("no loop", func(t *testing.T) {
		// Every call above reached its upstream once; the sidecar's own
		// connections (uid 15000) leave the pod unredirected, so none of
		// them came back: no 508, and no request counted twice.
		out, _, err := w.curl("http://127.0.0.1:15020/metrics")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, `code="508"`) {
			t.Errorf("a request looped:\n%s", grep(out, "minimesh_requests_total"))
		}
		if got := w.metric(`minimesh_requests_total{code="200",destination="` + upIP + `:8080",direction="outbound",method="GET"}`); got != 2 {
			t.Errorf("requests to %s:8080 counted %v times, want 2 (curl and Go; the others are named otherwise):\n%s", upIP, got, grep(out, "minimesh_requests_total"))
		}
		if n := web.ln.n.Load(); n > 4 {
			t.Errorf("the upstream accepted %d connections for the 4 calls to it", n)
		}
	})

	t.Run("drain", func(t *testing.T) {
		// On SIGTERM an opaque relay keeps working through the drain
		// (--drain-timeout 2s here), then is closed; the sidecar exits 0.
		c := w.dial(upIP + ":7000")
		buf := make([]byte, 2)
		if _, err := c.Write([]byte("\x00a")); err != nil { // unknown at once
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := syscall.Kill(w.sidecar.Pid(), syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		if _, err := c.Write([]byte("b2")); err != nil {
			t.Fatalf("relay broken at once by the drain: %v", err)
		}
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "b2" {
			t.Fatalf("relay during the drain: %q %v", buf, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(c)
		if d := time.Since(start); d < 1500*time.Millisecond || d > 5*time.Second {
			t.Errorf("relay closed %v after SIGTERM (%v), want about the 2 s drain timeout", d, err)
		}
		select {
		case <-w.sidecar.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("sidecar did not exit after the drain")
		}
		if _, err := w.sidecar.Exited(); err != nil {
			t.Errorf("sidecar exited with %v", err)
		}
		w.accessLine(map[string]any{"destination": upIP + ":7000", "error": "shutdown"})
	})
}

func grep(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestTransparentGoClient is the Go program of TestTransparentListener's
// "go transport": started from the pod with MM_TRANSPARENT_URL, it sends
// one GET with a transport of its own that knows no proxy.
func TestTransparentGoClient(t *testing.T) {
	u := os.Getenv("MM_TRANSPARENT_URL")
	if u == "" {
		t.Skip("run by TestTransparentListener")
	}
	c := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	fmt.Printf("status %d request-id %s\n", resp.StatusCode, resp.Header.Get("X-Request-ID"))
}

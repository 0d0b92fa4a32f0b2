package outbound_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
)

const secure = "payments-service:443"

// TestConnectTunnelTLS: an app's HTTPS request goes through the sidecar
// as a CONNECT tunnel; TLS is end to end between the app and the
// upstream, and the tunnel counts as a success for the destination's
// breaker. Its metrics are an opaque relay's: one tunnel, ok, and its
// bytes, never a request (docs/metrics.md: its 200 says nothing of the
// requests inside).
//
// Either side may end it: TLS has each send a close_notify before it
// closes, and the other's may cross it and arrive before the close(2),
// which TCP then turns into a reset; the tunnel still ends ok, as it did
// end in order (lateReset).
func TestConnectTunnelTLS(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(*http.Transport, *httptest.Server)
	}{
		{"the app closes", func(tr *http.Transport, _ *httptest.Server) { tr.CloseIdleConnections() }},
		{"the upstream closes", func(_ *http.Transport, ts *httptest.Server) { ts.CloseClientConnections() }},
	} {
		t.Run(tc.name, func(t *testing.T) { testConnectTunnelTLS(t, tc.close) })
	}
}

func testConnectTunnelTLS(t *testing.T, end func(*http.Transport, *httptest.Server)) {
	var hits atomic.Int64
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprintf(w, "hello over TLS, %s %s", r.Method, r.URL.Path)
	}))
	t.Cleanup(ts.Close)
	sc := startSidecar(t, "", resolve(ts.Listener.Addr().String(), secure))

	roots := x509.NewCertPool()
	roots.AddCert(ts.Certificate())
	tr := &http.Transport{
		Proxy: http.ProxyURL(sc.URL),
		// The test certificate names example.com; the app addresses the
		// service by its own name through the tunnel.
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "example.com"},
	}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for i := range 3 { // one tunnel, kept alive and reused
		resp, body := get(t, c, "https://"+secure+"/charge")
		if resp.StatusCode != http.StatusOK || string(body) != "hello over TLS, GET /charge" || resp.TLS == nil {
			t.Fatalf("request %d: %d %q (TLS %v)", i, resp.StatusCode, body, resp.TLS != nil)
		}
	}
	if got := hits.Load(); got != 3 {
		t.Fatalf("upstream saw %d requests, want 3", got)
	}
	st := sc.breaker(secure)
	if want := (breakerCounts{Requests: 1, TotalSuccesses: 1, ConsecutiveSuccesses: 1}); st.State != "closed" || st.Counts != want {
		t.Fatalf("breaker %+v, want closed with one successful tunnel", st)
	}
	end(tr, ts)
	sc.waitMetric(1, 5*time.Second, "minimesh_tcp_connections_total", "direction", "outbound", "destination", secure, "result", "ok")
	m := sc.metrics()
	if got := m.value("minimesh_tcp_connections_total", "destination", secure); got != 1 {
		t.Errorf("tcp_connections_total = %v, want the one tunnel", got)
	}
	if s, r := m.value("minimesh_tcp_sent_bytes_total", "direction", "outbound", "destination", secure), m.value("minimesh_tcp_received_bytes_total", "direction", "outbound", "destination", secure); s == 0 || r == 0 {
		t.Errorf("tunnel bytes sent %v received %v, want both counted", s, r)
	}
	if got := m.value("minimesh_requests_total", "destination", secure); got != 0 {
		t.Errorf("requests_total{destination=%s} = %v, want 0: a tunnel is not a request", secure, got)
	}
}

// connect sends a CONNECT on a raw connection, as an HTTPS client does,
// and returns the sidecar's answer.
func connect(t *testing.T, sc *testSidecar, authority string) (*http.Response, []byte) {
	t.Helper()
	return rawRoundTrip(t, sc.Addr, "CONNECT "+authority+" HTTP/1.1\r\nHost: "+authority+"\r\n\r\n")
}

// TestConnectRefused: a CONNECT to a port that refuses connections gets
// 502 connect-failure; each counts as a breaker failure, and once the
// breaker is open CONNECT gets 503 circuit-open at once. They are counted
// as tunnels by result, not as requests.
func TestConnectRefused(t *testing.T) {
	sc := startSidecar(t, policyDoc("payments", "payments-service", "circuitBreaker: {consecutiveFailures: 3, openTimeout: 30s}"),
		resolve(refused.Addr(t), secure))
	for range 3 {
		resp, body := connect(t, sc, secure)
		expectSidecarError(t, resp, body, http.StatusBadGateway, "connect-failure", secure)
	}
	if st := sc.breaker(secure); st.State != "open" {
		t.Fatalf("breaker after 3 refused tunnels: %+v, want open", st)
	}
	for range 2 {
		start := time.Now()
		resp, body := connect(t, sc, secure)
		if d := time.Since(start); d > fastFail {
			t.Errorf("refused CONNECT took %v", d)
		}
		expectCircuitOpen(t, resp, body, secure, 30)
	}
	m := sc.metrics()
	if got := m.value("minimesh_tcp_connections_total", "direction", "outbound", "destination", secure, "result", "connect-failure"); got != 3 {
		t.Errorf("tcp_connections_total{connect-failure} = %v, want 3", got)
	}
	if got := m.value("minimesh_tcp_connections_total", "direction", "outbound", "destination", secure, "result", "circuit-open"); got != 2 {
		t.Errorf("tcp_connections_total{circuit-open} = %v, want 2", got)
	}
	if got := m.value("minimesh_requests_total", "destination", secure); got != 0 {
		t.Errorf("requests_total{destination=%s} = %v, want 0", secure, got)
	}
	if got := m.value("minimesh_circuit_breaker_rejected_total", "destination", secure); got != 2 {
		t.Errorf("rejected_total = %v, want 2", got)
	}
}

// TestConnectTunnelBytes: the tunnel is a plain byte pipe: bytes the
// client sends right behind the CONNECT request (before reading the 200)
// reach the upstream (and are counted as sent), and the upstream's answer
// comes back.
func TestConnectTunnelBytes(t *testing.T) {
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %q", b)
	})
	sc := startSidecar(t, "", resolve(u.Host(), secure))
	inner := "POST /x HTTP/1.1\r\nHost: " + secure + "\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
	c := dialSidecar(t, sc)
	if _, err := io.WriteString(c, "CONNECT "+secure+" HTTP/1.1\r\nHost: "+secure+"\r\n\r\n"+inner); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT answer %v, %v: want 200", resp, err)
	}
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the upstream's answer through the tunnel: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != `got "hello"` {
		t.Fatalf("through the tunnel: %d %q %v, want the upstream's echo of the pipelined body", resp.StatusCode, body, err)
	}
	if got := u.hits.Load(); got != 1 {
		t.Fatalf("upstream saw %d requests, want 1", got)
	}
	c.Close()
	sc.waitMetric(1, 5*time.Second, "minimesh_tcp_connections_total", "destination", secure, "result", "ok")
	if got := sc.metric("minimesh_tcp_sent_bytes_total", "destination", secure); got != float64(len(inner)) {
		t.Errorf("tcp_sent_bytes_total = %v, want the %d pipelined bytes", got, len(inner))
	}
}

// TestConnectTunnelIdleTimeout: a tunnel that moves nothing is closed
// after TCPIdleTimeout, as an opaque relay is, and counted idle-timeout.
func TestConnectTunnelIdleTimeout(t *testing.T) {
	upAddr, _ := echoServer(t)
	r := newRig(t, "", 300*time.Millisecond)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: r.h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "CONNECT "+upAddr+" HTTP/1.1\r\nHost: "+upAddr+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT answer %v, %v: want 200", resp, err)
	}
	start := time.Now()
	if _, err := br.ReadByte(); err == nil || errorsIsTimeout(err) {
		t.Fatalf("idle tunnel not closed: %v", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("idle tunnel closed after %v, before its idle timeout", d)
	}
	r.waitMetric(1, "minimesh_tcp_connections_total", "direction", "outbound", "destination", upAddr, "result", "idle-timeout")
	if got := r.metric("minimesh_requests_total", "method", "CONNECT"); got != 0 {
		t.Errorf("requests_total{CONNECT} = %v, want 0", got)
	}
}

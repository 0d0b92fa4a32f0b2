package outbound_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// rig is an outbound handler with what a redirected connection meets: a
// server of Transparent() whose connections all claim one original
// destination, and a listener whose connections go to ServeTCP.
type rig struct {
	t       *testing.T
	h       *outbound.Handler
	metrics *telemetry.Metrics
	log     *accessLog
	access  *telemetry.AccessLog
}

func newRig(t *testing.T, policies string, idle time.Duration) *rig {
	t.Helper()
	var pols []*policy.ResiliencePolicy
	if policies != "" {
		var err error
		if pols, err = policy.Decode("test.yaml", []byte(policies)); err != nil {
			t.Fatal(err)
		}
	}
	r := &rig{t: t, metrics: telemetry.New(0), log: &accessLog{}}
	r.access = telemetry.NewAccessLog(r.log)
	t.Cleanup(r.access.Close)
	r.h = outbound.New(outbound.Config{
		Namespace: "default", Metrics: r.metrics, AccessLog: r.access, ConnectTimeout: time.Second,
		TCPIdleTimeout: idle, ServiceName: "app",
	}, policy.NewTable(pols, "default"))
	return r
}

// redirectedServer serves Transparent() on loopback, every connection
// redirected from orig.
func (r *rig) redirectedServer(orig string) string {
	r.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(orig)
	srv := &http.Server{Handler: r.h.Transparent(), ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
		return outbound.WithOriginalDst(ctx, ap)
	}}
	go func() { _ = srv.Serve(ln) }()
	r.t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// tcpListener hands every connection to ServeTCP with c.
func (r *rig) tcpListener(c outbound.TCPConn) string {
	r.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	var wg sync.WaitGroup
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); r.h.ServeTCP(conn, c) }()
		}
	}()
	r.t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

func (r *rig) metric(name string, labels ...string) float64 {
	r.t.Helper()
	ms, err := proxytest.ParseMetrics(string(r.metrics.Registry.AppendText(nil)))
	if err != nil {
		r.t.Fatal(err)
	}
	v, _ := ms.Value(name, labels...)
	return v
}

func (r *rig) waitMetric(want float64, name string, labels ...string) {
	r.t.Helper()
	var got float64
	if !proxytest.Poll(5*time.Second, 5*time.Millisecond, func() bool { got = r.metric(name, labels...); return got == want }) {
		r.t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
	}
}

func (r *rig) logText() string {
	r.log.mu.Lock()
	defer r.log.mu.Unlock()
	return r.log.b.String()
}

// lines waits for n access log lines.
func (r *rig) lines(n int) []map[string]any {
	r.t.Helper()
	var out []map[string]any
	proxytest.Poll(5*time.Second, 10*time.Millisecond, func() bool {
		out = nil
		for _, l := range strings.Split(strings.TrimSpace(r.logText()), "\n") {
			if l == "" {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				r.t.Fatalf("%v: %q", err, l)
			}
			out = append(out, m)
		}
		return len(out) >= n
	})
	if len(out) != n {
		r.t.Fatalf("access log has %d lines, want %d:\n%s", len(out), n, r.logText())
	}
	return out
}

// TestTransparentHTTPDialsOriginalDst: a redirected request is named by
// its Host (which resolves nowhere) and sent to the original destination.
func TestTransparentHTTPDialsOriginalDst(t *testing.T) {
	var gotHost, gotID, gotVia string
	up := proxytest.NewUpstream(t, func(w http.ResponseWriter, req *http.Request, _ int64) {
		gotHost, gotID, gotVia = req.Host, req.Header.Get("X-Request-ID"), req.Header.Get("Via")
		_, _ = io.WriteString(w, "ok")
	})
	r := newRig(t, "", 0)
	_, port, _ := net.SplitHostPort(up.Host())
	addr := r.redirectedServer(up.Host())
	resp, body := rawRoundTrip(t, addr, "GET /x?q=1 HTTP/1.1\r\nHost: geo-service.default.svc.cluster.local:8000\r\nConnection: close\r\n\r\n")
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if gotHost != "geo-service.default.svc.cluster.local:8000" || gotID == "" || gotVia == "" {
		t.Errorf("upstream saw Host %q, X-Request-ID %q, Via %q", gotHost, gotID, gotVia)
	}
	if up.Hits.Load() != 1 {
		t.Errorf("upstream hits %d", up.Hits.Load())
	}
	// Named by the Host's name, on the port the app connected to.
	dest := "geo-service:" + port
	r.waitMetric(1, "minimesh_requests_total", "destination", dest, "code", "200")
	l := r.lines(1)[0]
	if l["destination"] != dest || l["original_dst"] != up.Host() || l["request_id"] != gotID {
		t.Errorf("access log line %v", l)
	}
}

// TestTransparentHTTPWithoutHost names the destination by its address.
func TestTransparentHTTPWithoutHost(t *testing.T) {
	up := proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) {})
	r := newRig(t, "", 0)
	addr := r.redirectedServer(up.Host())
	resp, _ := rawRoundTrip(t, addr, "GET / HTTP/1.0\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("got %d", resp.StatusCode)
	}
	r.waitMetric(1, "minimesh_requests_total", "destination", up.Host())
}

// TestTransparentHTTPRefusals: a proxy request on a redirected connection
// is the app's mistake (400); an original destination that is one of the
// sidecar's own ports is refused (403).
func TestTransparentHTTPRefusals(t *testing.T) {
	up := proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) {})
	r := newRig(t, "", 0)
	addr := r.redirectedServer(up.Host())
	resp, body := rawRoundTrip(t, addr, "GET http://elsewhere/ HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
	expectSidecarError(t, resp, body, 400, "bad-request", "")
	resp, body = rawRoundTrip(t, addr, "CONNECT elsewhere:443 HTTP/1.1\r\nHost: elsewhere:443\r\n\r\n")
	expectSidecarError(t, resp, body, 400, "bad-request", "")

	self := newRig(t, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	self.h.AddListener(ln.Addr())
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	addr = self.redirectedServer("127.0.0.2:" + port) // another spelling of this host
	resp, body = rawRoundTrip(t, addr, "GET / HTTP/1.1\r\nHost: anything\r\n\r\n")
	if resp.StatusCode != 403 || resp.Header.Get("X-Minimesh-Error") != "forbidden" {
		t.Errorf("self: %d %s %s", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), body)
	}
	if up.Hits.Load() != 0 {
		t.Errorf("upstream hits %d", up.Hits.Load())
	}
}

// echoServer echoes each connection until its client half-closes, then
// writes "bye" and closes.
func echoServer(t *testing.T) (string, *sync.WaitGroup) {
	t.Helper()
	var wg sync.WaitGroup
	addr := serveConns(t, &wg, func(c net.Conn) {
		_, _ = io.Copy(c, c)
		_, _ = c.Write([]byte("bye"))
	})
	return addr, &wg
}

// TestServeTCPRelays: bytes both ways, the half-close passed on (the
// server answers after the client's end), then a metric and a log line.
func TestServeTCPRelays(t *testing.T) {
	upAddr, _ := echoServer(t)
	r := newRig(t, "", 0)
	addr := r.tcpListener(outbound.TCPConn{Original: netip.MustParseAddrPort(upAddr), SNI: "db.example", Protocol: "tls"})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hellobye" {
		t.Fatalf("read %q, %v", got, err)
	}
	_, port, _ := net.SplitHostPort(upAddr)
	dest := "db.example:" + port
	r.waitMetric(1, "minimesh_tcp_connections_total", "destination", dest, "result", "ok")
	if s, rc := r.metric("minimesh_tcp_sent_bytes_total", "destination", dest), r.metric("minimesh_tcp_received_bytes_total", "destination", dest); s != 5 || rc != 8 {
		t.Errorf("bytes sent %v received %v, want 5 and 8", s, rc)
	}
	l := r.lines(1)[0]
	want := map[string]any{"destination": dest, "original_dst": upAddr, "sni": "db.example", "protocol": "tls", "bytes_in": 5.0, "bytes_out": 8.0, "attempts": 1.0, "breaker": "closed", "service": "app"}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("%s = %v, want %v (line %v)", k, l[k], v, l)
		}
	}
	for _, k := range []string{"request_id", "method", "status", "error"} {
		if _, ok := l[k]; ok {
			t.Errorf("TCP line has %s: %v", k, l)
		}
	}
}

// TestServeTCPResetAfterClose: a side's reset ends the relay as reset
// while the other side has not closed, and as ok once it has closed in
// order with all its bytes passed on: TCP resets a connection closed with
// bytes unread, and at the end of an exchange those are the other side's
// goodbye (a TLS close_notify crossing the close; lateReset). Either way
// the other side learns of the reset by a reset, never an orderly end (it
// may still be reading after its half-close).
func TestServeTCPResetAfterClose(t *testing.T) {
	for _, tc := range []struct {
		name     string
		upCloses bool
		want     string
	}{
		{"the other side open", false, "reset"},
		{"after the other side closed", true, "ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			accepted := make(chan net.Conn, 1)
			go func() {
				if c, err := ln.Accept(); err == nil {
					accepted <- c
				}
			}()
			r := newRig(t, "", 0)
			upAddr := ln.Addr().String()
			c, err := net.Dial("tcp", r.tcpListener(outbound.TCPConn{Original: netip.MustParseAddrPort(upAddr), Protocol: "tls"}))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			up := <-accepted
			defer up.Close()
			up.SetDeadline(time.Now().Add(5 * time.Second))
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(up, make([]byte, 5)); err != nil {
				t.Fatal(err)
			}
			if tc.upCloses {
				if _, err := up.Write([]byte("bye")); err != nil {
					t.Fatal(err)
				}
				_ = up.(*net.TCPConn).CloseWrite()
				if got, err := io.ReadAll(c); err != nil || string(got) != "bye" {
					t.Fatalf("the client read %q, %v: want the upstream's bye and its end", got, err)
				}
			}
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
			if n, err := up.Read(make([]byte, 8)); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("the upstream read %d, %v after the client's reset; want a reset", n, err)
			}
			r.waitMetric(1, "minimesh_tcp_connections_total", "destination", upAddr, "result", tc.want)
			if got := r.metric("minimesh_tcp_connections_total", "destination", upAddr); got != 1 {
				t.Errorf("tcp_connections_total = %v, want the one connection", got)
			}
		})
	}
}

// TestServeTCPBreaker: refused connects open the breaker on the Nth; then
// connections are reset at once without a dial, counted as rejected.
func TestServeTCPBreaker(t *testing.T) {
	down := refused.Addr(t)
	r := newRig(t, policyDoc("all", "*", "circuitBreaker:\n  consecutiveFailures: 2\n  openTimeout: 60s"), 0)
	addr := r.tcpListener(outbound.TCPConn{Original: netip.MustParseAddrPort(down), Protocol: "unknown"})
	for i := range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			continue // reset before the dial returned: ended as well
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		n, err := c.Read(make([]byte, 1))
		if n != 0 || err == nil || errorsIsTimeout(err) {
			t.Fatalf("connection %d: read %d, %v; want the connection ended", i, n, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("connection %d ended after %v", i, d)
		}
		c.Close()
	}
	r.waitMetric(2, "minimesh_tcp_connections_total", "destination", down, "result", "connect-failure")
	r.waitMetric(1, "minimesh_tcp_connections_total", "destination", down, "result", "circuit-open")
	r.waitMetric(1, "minimesh_circuit_breaker_rejected_total", "destination", down)
	// One line per connection. The sidecar resets a connection before it
	// writes that connection's line, so the next connection's line may
	// come first: count them, in any order.
	var open, refused int
	for _, l := range r.lines(3) {
		switch {
		case l["error"] == "circuit-open" && l["breaker"] == "open":
			open++
		case l["error"] == "connect-failure":
			refused++
		default:
			t.Errorf("line %v is neither a connect failure nor circuit-open", l)
		}
	}
	if open != 1 || refused != 2 {
		t.Errorf("%d circuit-open and %d connect-failure lines; want 1 and 2", open, refused)
	}
}

func errorsIsTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestServeTCPSelf: an original destination on one of the sidecar's own
// ports is never dialled.
func TestServeTCPSelf(t *testing.T) {
	r := newRig(t, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r.h.AddListener(ln.Addr())
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	addr := r.tcpListener(outbound.TCPConn{Original: netip.MustParseAddrPort("127.0.0.1:" + port), Protocol: "unknown"})
	if c, err := net.Dial("tcp", addr); err == nil { // the reset may beat the dial's return
		defer c.Close()
		_, _ = c.Read(make([]byte, 1))
	}
	r.waitMetric(1, "minimesh_tcp_connections_total", "result", "forbidden")
}

// TestServeTCPIdleTimeout: a relay that moves nothing is closed; one that
// keeps moving is not.
func TestServeTCPIdleTimeout(t *testing.T) {
	upAddr, _ := echoServer(t)
	r := newRig(t, "", 300*time.Millisecond)
	addr := r.tcpListener(outbound.TCPConn{Original: netip.MustParseAddrPort(upAddr), Protocol: "no-data"})
	busy, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	start := time.Now()
	buf := make([]byte, 1)
	for time.Since(start) < time.Second {
		if _, err := busy.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(busy, buf); err != nil {
			t.Fatalf("busy relay ended: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Read(buf); err == nil || errorsIsTimeout(err) {
		t.Fatalf("idle relay not closed: %v", err)
	}
	r.waitMetric(1, "minimesh_tcp_connections_total", "destination", upAddr, "result", "idle-timeout")
}

// TestServeTCPAfterDrain: a relay whose dial ends after the drain closed
// those left is ended at once (result shutdown), not left running unseen
// until the process exits.
func TestServeTCPAfterDrain(t *testing.T) {
	upAddr, _ := echoServer(t)
	r := newRig(t, "", 0)
	orig := netip.MustParseAddrPort(upAddr)
	addr := r.tcpListener(outbound.TCPConn{Original: orig, Protocol: "unknown"})
	held, err := net.Dial("tcp", addr) // open through the drain
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, err := held.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	r.waitMetric(1, "minimesh_tcp_sent_bytes_total", "destination", upAddr)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the drain's time is up at once: it closes the relay left
	r.h.Drain(ctx)
	r.waitMetric(1, "minimesh_tcp_connections_total", "destination", upAddr, "result", "shutdown")
	late, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	_ = late.SetDeadline(time.Now().Add(5 * time.Second))
	if got, _ := io.ReadAll(late); len(got) != 0 {
		t.Errorf("a relay made after the drain answered %q", got)
	}
	r.waitMetric(2, "minimesh_tcp_connections_total", "destination", upAddr, "result", "shutdown")
}

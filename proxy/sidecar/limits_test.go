package sidecar_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// rawConn is a keep-alive HTTP/1.1 client connection to the sidecar.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{c, bufio.NewReader(c)}
}

// do sends one request and reads its answer.
func (c *rawConn) do(t *testing.T, req string) (*http.Response, string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		t.Fatal("reading response:", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading body: %v (%d %v)", err, resp.StatusCode, resp.Header)
	}
	return resp, string(b)
}

// refused reports whether a connection to addr is closed by the sidecar
// at once: the dial or the first read fails.
func refused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return true // reset before connect returned
	}
	defer c.Close()
	return (&rawConn{c, bufio.NewReader(c)}).closed()
}

// closed reports whether the peer has closed c: a read ends at once.
func (c *rawConn) closed() bool {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.r.ReadByte()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

const getGeo = "GET http://" + geo + "/ HTTP/1.1\r\nHost: " + geo + "\r\n\r\n"

// TestAdminConnectionCap: the admin listener has its own cap, and one peer
// address a share of it: past the share a connection is closed at once and
// counted, labelled listener="admin"; at the cap a newcomer takes the
// place of a connection idle between requests.
func TestAdminConnectionCap(t *testing.T) {
	r := start(t, sidecar.Config{AdminMaxConnections: 3, AdminMaxConnectionsPerSource: 2})
	addr := r.sc.AdminAddr()
	a := dialRaw(t, addr)
	resp, _ := a.do(t, "GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("/live: %d", resp.StatusCode)
	}
	// The readiness poll's connections are closed by the client; the
	// server counts one as open until it has read that close. Wait until
	// a is the only one, so that the places are known.
	if !proxytest.Poll(5*time.Second, 5*time.Millisecond, func() bool {
		_, body := a.do(t, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
		ms, err := proxytest.ParseMetrics(body)
		v, ok := ms.Value("minimesh_connections_open", "listener", "admin")
		return err == nil && ok && v == 1
	}) {
		t.Fatal("the readiness poll's admin connections were still open after 5s")
	}
	b := dialRaw(t, addr) // 127.0.0.1's second place
	if !refused(addr) {
		t.Fatal("a third connection from one address with a share of 2 was not closed")
	}
	// Another address gets the third place.
	other := dialFrom(t, "127.0.0.2", addr)
	resp, _ = other.do(t, "GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("/live from 127.0.0.2: %d", resp.StatusCode)
	}
	ms := adminMetrics(t, b)
	for _, c := range []struct {
		name, listener string
		want           float64
	}{
		{"minimesh_connections_refused_total", "admin", 1},
		{"minimesh_connections_open", "admin", 3},
		{"minimesh_connections_refused_total", "outbound", 0},
		{"minimesh_connections_open", "outbound", 0},
	} {
		if v, ok := ms.Value(c.name, "listener", c.listener); !ok || v != c.want {
			t.Errorf(`%s{listener=%q} = %v (present %v), want %v`, c.name, c.listener, v, ok, c.want)
		}
	}
	// At the cap, with a, b and other idle between requests, a newcomer
	// from a fourth address takes the place of the one idle longest (which
	// one, the server's scheduling decides: connlimit's TestShareEvicts
	// holds the order): it is served, and one of them is closed.
	d := dialFrom(t, "127.0.0.3", addr)
	resp, _ = d.do(t, "GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("/live at the cap: %d", resp.StatusCode)
	}
	held := []*rawConn{a, b, other}
	gone := 0
	if !proxytest.Poll(5*time.Second, 0, func() bool {
		gone = 0
		for _, c := range held {
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if _, err := c.r.Peek(1); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				gone++
			}
		}
		return gone == 1
	}) {
		t.Fatalf("%d of the 3 idle connections closed for the newcomer at the cap, want 1", gone)
	}
}

// dialFrom is dialRaw from a loopback address of the test's choosing.
func dialFrom(t *testing.T, from, addr string) *rawConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{c, bufio.NewReader(c)}
}

// adminMetrics reads the admin's metrics on c.
func adminMetrics(t *testing.T, c *rawConn) proxytest.Metrics {
	t.Helper()
	resp, body := c.do(t, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	ms, err := proxytest.ParseMetrics(body)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// TestAdminHeaderLimit: the admin listener bounds request headers as
// every listener does (64 KiB, docs/operations.md), not at net/http's
// 1 MiB, which let connections from the pod network hold 100 MB.
func TestAdminHeaderLimit(t *testing.T) {
	r := start(t, sidecar.Config{})
	for _, tc := range []struct {
		size int
		want int
	}{
		{60 << 10, http.StatusOK},
		{70 << 10, http.StatusRequestHeaderFieldsTooLarge},
		{500 << 10, http.StatusRequestHeaderFieldsTooLarge},
	} {
		c := dialRaw(t, r.sc.AdminAddr())
		resp, _ := c.do(t, "GET /live HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", tc.size)+"\r\n\r\n")
		if resp.StatusCode != tc.want {
			t.Errorf("/live with a %d KiB header: %d, want %d", tc.size>>10, resp.StatusCode, tc.want)
		}
	}
}

// TestOutboundConnectionCap: past MaxConnections the outbound listener
// closes a connection as soon as it accepts it; closing one makes room.
func TestOutboundConnectionCap(t *testing.T) {
	u := newUpstream(t)
	r := start(t, sidecar.Config{Resolve: map[string]string{geo: u.Host()}, MaxConnections: 2})
	a := dialRaw(t, r.sc.OutboundAddr())
	a.do(t, getGeo)
	b := dialRaw(t, r.sc.OutboundAddr())
	b.do(t, getGeo)
	if !refused(r.sc.OutboundAddr()) {
		t.Fatal("a third connection with a cap of 2 was not closed")
	}
	if v, ok := r.metrics(t).Value("minimesh_connections_refused_total", "listener", "outbound"); !ok || v != 1 {
		t.Errorf(`minimesh_connections_refused_total{listener="outbound"} = %v (present %v), want 1`, v, ok)
	}
	b.Close()
	if !proxytest.Poll(5*time.Second, 10*time.Millisecond, func() bool {
		v, _ := r.metrics(t).Value("minimesh_connections_open", "listener", "outbound")
		return v == 1
	}) {
		t.Fatal("minimesh_connections_open did not come back to 1 after a client closed")
	}
	c := dialRaw(t, r.sc.OutboundAddr())
	if resp, _ := c.do(t, getGeo); resp.StatusCode != 200 {
		t.Fatalf("a connection after one closed: %d", resp.StatusCode)
	}
}

// TestIdleTimeoutOutlastsGoClients: the sidecar closes an idle keep-alive
// connection later than Go's own client pool drops it, so that a Go app
// never sends a request on a connection the sidecar is closing.
func TestIdleTimeoutOutlastsGoClients(t *testing.T) {
	goIdle := http.DefaultTransport.(*http.Transport).IdleConnTimeout
	if sidecar.IdleTimeout <= goIdle {
		t.Errorf("IdleTimeout %v, want longer than Go's client pool's %v", sidecar.IdleTimeout, goIdle)
	}
	if sidecar.ReadHeaderTimeout >= sidecar.IdleTimeout {
		t.Errorf("ReadHeaderTimeout %v, want shorter than IdleTimeout %v", sidecar.ReadHeaderTimeout, sidecar.IdleTimeout)
	}
}

// TestNonLoopbackWarning: an outbound listener reachable from the
// network is worth a warning at start.
func TestNonLoopbackWarning(t *testing.T) {
	for _, c := range []struct {
		addr string
		warn bool
	}{{"0.0.0.0:0", true}, {"127.0.0.1:0", false}, {"[::1]:0", false}} {
		logs := &syncBuffer{}
		logger := slog.New(slog.NewJSONHandler(logs, nil))
		sc, err := sidecar.Listen(sidecar.Config{OutboundAddr: c.addr, AdminAddr: "127.0.0.1:0", Logger: logger, Server: proxytest.Server()})
		if err != nil {
			if strings.Contains(c.addr, "::1") {
				continue // no IPv6 here
			}
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // Serve starts, drains at once and closes the listeners
		if err := sc.Serve(ctx); err != nil {
			t.Fatal(err)
		}
		warned := strings.Contains(logs.String(), `"level":"WARN"`) && strings.Contains(logs.String(), "reachable from the network")
		if warned != c.warn {
			t.Errorf("outbound %s: warned %v, want %v\n%s", c.addr, warned, c.warn, logs.String())
		}
	}
}

package inbound

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// switchingApp is an app that answers an upgrade with a 101 and hands
// the switched connection (its reader holding what came behind the
// head) to after.
func switchingApp(after func(c net.Conn, br *bufio.Reader)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		after(c, brw.Reader)
	})
}

// upgradeInto sends a WebSocket handshake to the rig and returns the
// caller's connection past the 101, and its reader.
func (r *rig) upgradeInto(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", r.front)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second)) // bounds a failing test only
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake answer %v, %v: want the 101", resp, err)
	}
	return c, br
}

// upgradeEnd waits for the upgraded connection's log line (written when
// it ended; the log flushes every 200 ms) and returns it with the
// metrics then.
func (r *rig) upgradeEnd(t *testing.T) (map[string]any, proxytest.Metrics) {
	t.Helper()
	proxytest.Poll(5*time.Second, 10*time.Millisecond, func() bool { return r.logOut.String() != "" })
	l := r.logLines(t)
	if len(l) != 1 {
		t.Fatalf("access log %v, want one line", l)
	}
	m, err := proxytest.ParseMetrics(gather(t, r.m))
	if err != nil {
		t.Fatal(err)
	}
	return l[0], m
}

// TestUpgradeEndAppReset: a WebSocket the app resets after its 101 and 3
// bytes reaches the caller as a reset, after the 3 bytes, and is recorded
// as the app's failure: the log's 101 with error "reset" and bytes_out 3,
// minimesh_requests_total's 502, result="reset".
func TestUpgradeEndAppReset(t *testing.T) {
	got := make(chan struct{})
	r := newRig(t, switchingApp(func(c net.Conn, _ *bufio.Reader) {
		io.WriteString(c, "abc")
		<-got
		_ = c.(*net.TCPConn).SetLinger(0)
	}), Config{})
	c, br := r.upgradeInto(t)
	buf := make([]byte, 3)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "abc" {
		t.Fatalf("the caller read %q, %v: want the app's abc", buf, err)
	}
	close(got)
	if _, err := br.ReadByte(); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("after the app's reset the caller read %v, want a reset (ECONNRESET), not an orderly end", err)
	}
	c.Close()
	l, m := r.upgradeEnd(t)
	if l["status"] != float64(101) || l["error"] != "reset" || l["bytes_out"] != float64(3) {
		t.Errorf("access log %v, want status 101, error reset, bytes_out 3", l)
	}
	if n, _ := m.Value("minimesh_requests_total", "direction", "inbound", "code", "502"); n != 1 {
		t.Errorf("requests_total{code=502} = %v, want 1:\n%s", n, grep(gather(t, r.m), "minimesh_requests_total{"))
	}
	if n, _ := m.Value("minimesh_tcp_connections_total", "direction", "inbound", "destination", r.port(), "result", "reset"); n != 1 {
		t.Errorf("tcp_connections_total{result=reset} = %v, want 1", n)
	}
}

// TestUpgradeEndCallerReset: a WebSocket the caller resets reaches the
// app as a reset and is recorded as the caller's leaving (499).
func TestUpgradeEndCallerReset(t *testing.T) {
	appErr := make(chan error, 1)
	r := newRig(t, switchingApp(func(_ net.Conn, br *bufio.Reader) {
		_, err := br.ReadByte()
		appErr <- err
	}), Config{})
	c, _ := r.upgradeInto(t)
	_ = c.(*net.TCPConn).SetLinger(0)
	c.Close()
	select {
	case err := <-appErr:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("after the caller's reset the app read %v, want a reset", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the app's connection outlived the caller's reset")
	}
	l, m := r.upgradeEnd(t)
	if l["status"] != float64(499) || l["error"] != nil {
		t.Errorf("access log %v, want status 499 without error", l)
	}
	if n, _ := m.Value("minimesh_tcp_connections_total", "direction", "inbound", "result", "reset"); n != 1 {
		t.Errorf("tcp_connections_total{result=reset} = %v, want 1", n)
	}
}

// TestUpgradeEndClean: a WebSocket closed in order is a success, with
// its bytes both ways in the log and the relays' byte counters.
func TestUpgradeEndClean(t *testing.T) {
	r := newRig(t, switchingApp(func(c net.Conn, br *bufio.Reader) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(br, buf); err == nil {
			io.WriteString(c, "hi") // then FIN
		}
	}), Config{})
	c, br := r.upgradeInto(t)
	io.WriteString(c, "hello")
	if b, err := io.ReadAll(br); err != nil || string(b) != "hi" {
		t.Fatalf("the caller read %q, %v: want hi and the app's orderly end", b, err)
	}
	c.Close()
	l, m := r.upgradeEnd(t)
	if l["status"] != float64(101) || l["error"] != nil || l["bytes_in"] != float64(5) || l["bytes_out"] != float64(2) {
		t.Errorf("access log %v, want status 101, no error, bytes_in 5, bytes_out 2", l)
	}
	if n, _ := m.Value("minimesh_tcp_connections_total", "direction", "inbound", "result", "ok"); n != 1 {
		t.Errorf("tcp_connections_total{result=ok} = %v, want 1", n)
	}
	if s, _ := m.Value("minimesh_tcp_sent_bytes_total", "direction", "inbound"); s != 5 {
		t.Errorf("tcp_sent_bytes_total = %v, want 5", s)
	}
}

// TestUpgradeIdleTimeout: an upgraded connection silent both ways is
// closed after the relays' idle limit (TCPIdleTimeout, short here), both
// sides, and recorded as idle-timeout.
func TestUpgradeIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	appEnd := make(chan error, 1)
	r := newRig(t, switchingApp(func(_ net.Conn, br *bufio.Reader) {
		_, err := br.ReadByte()
		appEnd <- err
	}), Config{TCPIdleTimeout: idle})
	_, br := r.upgradeInto(t)
	start := time.Now()
	if _, err := br.ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("the idle upgraded connection was not closed: %v", err)
	}
	if d := time.Since(start); d < idle-50*time.Millisecond {
		t.Errorf("closed after %v, before its idle limit %v", d, idle)
	}
	select {
	case err := <-appEnd:
		if err == nil {
			t.Error("the app read a byte")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the app's connection was left open")
	}
	l, m := r.upgradeEnd(t)
	if l["status"] != float64(101) || l["error"] != "idle-timeout" {
		t.Errorf("access log %v, want status 101, error idle-timeout", l)
	}
	if n, _ := m.Value("minimesh_tcp_connections_total", "direction", "inbound", "result", "idle-timeout"); n != 1 {
		t.Errorf("tcp_connections_total{result=idle-timeout} = %v, want 1", n)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

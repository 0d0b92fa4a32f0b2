package outbound_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

// upgradeHead is the app's WebSocket handshake to geo.
const upgradeHead = "GET http://" + geo + "/ws HTTP/1.1\r\nHost: " + geo + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"

// switchUpstream answers each request with a 101 and hands the switched
// connection (its reader holding what came behind the head) to after.
func switchUpstream(t *testing.T, after func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	addr, _ := newRawUpstream(t, func(c net.Conn, req *http.Request) {
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		after(c, bufio.NewReader(c))
	})
	return addr
}

// upgradeThrough sends the handshake through the sidecar and returns the
// app's connection past the 101, and its reader.
func upgradeThrough(t *testing.T, sc *testSidecar) (net.Conn, *bufio.Reader) {
	t.Helper()
	c := dialSidecar(t, sc)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, upgradeHead); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake answer %v, %v: want the 101", resp, err)
	}
	return c, br
}

// TestUpgradeEndUpstreamReset: a WebSocket the upstream resets after its
// 101 and 3 bytes reaches the app as a reset, after the 3 bytes, and is
// recorded as the upstream's failure: the access log's 101 with error
// "reset" and bytes_out 3, minimesh_requests_total's 502 (not 101), a
// tunnel's result="reset". The breaker heard of the 101 only, as of a
// tunnel's connect: the reset is no failure of its (docs/operations.md).
func TestUpgradeEndUpstreamReset(t *testing.T) {
	got := make(chan struct{})
	addr := switchUpstream(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "abc")
		<-got
		resetConn(c)
	})
	log := &accessLog{}
	sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 1}"), resolve(addr, geo), withAccessLog(log))
	c, br := upgradeThrough(t, sc)
	defer c.Close()
	buf := make([]byte, 3)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "abc" {
		t.Fatalf("the app read %q, %v: want the upstream's abc", buf, err)
	}
	close(got)
	if _, err := br.ReadByte(); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("after the upstream's reset the app read %v, want a reset (ECONNRESET), not an orderly end", err)
	}
	e := log.wait(t, 1, 5*time.Second)[0]
	if e.Status != 101 || e.Error != "reset" || e.BytesOut != 3 || e.BytesIn != 0 {
		t.Errorf("access log status %d error %q bytes_in %d bytes_out %d, want 101 \"reset\" 0 3", e.Status, e.Error, e.BytesIn, e.BytesOut)
	}
	m := sc.metrics()
	if n := m.value("minimesh_requests_total", "destination", geo, "code", "502"); n != 1 {
		t.Errorf("requests_total{code=502} = %v, want 1 (requests_total{code=101} = %v)", n, m.value("minimesh_requests_total", "destination", geo, "code", "101"))
	}
	if n := m.value("minimesh_tcp_connections_total", "destination", geo, "result", "reset"); n != 1 {
		t.Errorf("tcp_connections_total{result=reset} = %v, want 1", n)
	}
	if n := m.value("minimesh_tcp_received_bytes_total", "destination", geo); n != 3 {
		t.Errorf("tcp_received_bytes_total = %v, want 3", n)
	}
	if b := sc.breaker(geo); b.State != "closed" {
		t.Errorf("breaker %+v, want closed: a reset after the 101 is not the handshake's failure", b)
	}
}

// TestUpgradeEndAppReset: a WebSocket the app resets reaches the
// upstream as a reset, and is recorded as the app's leaving (499), never
// a success nor the upstream's failure.
func TestUpgradeEndAppReset(t *testing.T) {
	upErr := make(chan error, 1)
	addr := switchUpstream(t, func(c net.Conn, br *bufio.Reader) {
		_, err := br.ReadByte()
		upErr <- err
	})
	log := &accessLog{}
	sc := startSidecar(t, "", resolve(addr, geo), withAccessLog(log))
	c, _ := upgradeThrough(t, sc)
	resetConn(c)
	select {
	case err := <-upErr:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("after the app's reset the upstream read %v, want a reset", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream's connection outlived the app's reset")
	}
	e := log.wait(t, 1, 5*time.Second)[0]
	if e.Status != 499 || e.Error != "" {
		t.Errorf("access log status %d error %q, want 499 (the app went away)", e.Status, e.Error)
	}
	sc.waitMetric(1, 5*time.Second, "minimesh_tcp_connections_total", "destination", geo, "result", "reset")
	if n := sc.metric("minimesh_requests_total", "destination", geo, "code", "499"); n != 1 {
		t.Errorf("requests_total{code=499} = %v, want 1", n)
	}
}

// TestUpgradeEndClean: a WebSocket both peers close in order is a
// success, with its bytes both ways in the access log and the tunnels'
// byte counters.
func TestUpgradeEndClean(t *testing.T) {
	addr := switchUpstream(t, func(c net.Conn, br *bufio.Reader) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(br, buf); err == nil {
			io.WriteString(c, "hi") // then FIN
		}
	})
	log := &accessLog{}
	sc := startSidecar(t, "", resolve(addr, geo), withAccessLog(log))
	c, br := upgradeThrough(t, sc)
	io.WriteString(c, "hello")
	if b, err := io.ReadAll(br); err != nil || string(b) != "hi" {
		t.Fatalf("the app read %q, %v: want hi and the upstream's orderly end", b, err)
	}
	c.Close()
	e := log.wait(t, 1, 5*time.Second)[0]
	if e.Status != 101 || e.Error != "" || e.BytesIn != 5 || e.BytesOut != 2 {
		t.Errorf("access log status %d error %q bytes_in %d bytes_out %d, want 101 \"\" 5 2", e.Status, e.Error, e.BytesIn, e.BytesOut)
	}
	m := sc.metrics()
	if n := m.value("minimesh_tcp_connections_total", "destination", geo, "result", "ok"); n != 1 {
		t.Errorf("tcp_connections_total{result=ok} = %v, want 1", n)
	}
	if n := m.value("minimesh_requests_total", "destination", geo, "code", "101"); n != 1 {
		t.Errorf("requests_total{code=101} = %v, want 1", n)
	}
	if s, r := m.value("minimesh_tcp_sent_bytes_total", "destination", geo), m.value("minimesh_tcp_received_bytes_total", "destination", geo); s != 5 || r != 2 {
		t.Errorf("tcp bytes sent %v received %v, want 5 2", s, r)
	}
}

// TestUpgradeIdleTimeout: an upgraded connection silent both ways is
// closed after the tunnels' idle limit (TCPIdleTimeout, short here),
// both sides, recorded as idle-timeout. On both HTTP/1 servers.
func TestUpgradeIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	for _, server := range []string{sidecar.ServerLean, sidecar.ServerStd} {
		t.Run(server, func(t *testing.T) {
			upEnd := make(chan error, 1)
			addr := switchUpstream(t, func(c net.Conn, br *bufio.Reader) {
				_, err := br.ReadByte()
				upEnd <- err
			})
			log := &accessLog{}
			sc := startSidecar(t, "", resolve(addr, geo), withAccessLog(log), withServer(server),
				func(c *sidecar.Config) { c.TCPIdleTimeout = idle })
			c, br := upgradeThrough(t, sc)
			defer c.Close()
			start := time.Now()
			if _, err := br.ReadByte(); err == nil || errorsIsTimeout(err) {
				t.Fatalf("the idle upgraded connection was not closed: %v", err)
			}
			if d := time.Since(start); d < idle-50*time.Millisecond {
				t.Errorf("closed after %v, before its idle limit %v", d, idle)
			}
			select {
			case err := <-upEnd:
				if err == nil {
					t.Errorf("the upstream read a byte")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream's connection was left open")
			}
			e := log.wait(t, 1, 5*time.Second)[0]
			if e.Status != 101 || e.Error != "idle-timeout" {
				t.Errorf("access log status %d error %q, want 101 \"idle-timeout\"", e.Status, e.Error)
			}
			sc.waitMetric(1, 5*time.Second, "minimesh_tcp_connections_total", "destination", geo, "result", "idle-timeout")
		})
	}
}

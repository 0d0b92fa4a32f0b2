package sidecar_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// echoServer is an upstream that echoes what it reads; one whose request
// line it reads first answers 101 (a WebSocket's upgrade), then echoes.
func echoServer(t *testing.T, upgrade bool) string {
	addr, _ := proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		br := bufio.NewReader(c)
		if upgrade {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		}
		_, _ = io.Copy(c, br)
	})
	return addr
}

// ping sends a line through c and reads it back.
func (c *rawConn) ping(t *testing.T) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal("ping:", err)
	}
	if line, err := c.r.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("ping: read %q, %v", line, err)
	}
}

// connect opens a CONNECT tunnel to geo through the sidecar.
func connect(t *testing.T, r *running) *rawConn {
	t.Helper()
	c := dialRaw(t, r.sc.OutboundAddr())
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", geo, geo)
	if resp, err := http.ReadResponse(c.r, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	return c
}

// served waits for Serve to return.
func (r *running) served(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
		r.done <- nil // for the cleanup
	case <-time.After(within):
		t.Fatalf("Serve did not return within %v", within)
	}
}

// TestDrainEndClosesUpgrades: a WebSocket still open at the drain's end
// is closed with the tunnels, and its request ends and is logged before
// Serve returns. It was left open: its handler ran on, Serve waited 2 s
// for it in vain and closed the access log without its line, and the
// connection lived until the process exited.
func TestDrainEndClosesUpgrades(t *testing.T) {
	var alog syncBuffer
	r := start(t, sidecar.Config{Resolve: map[string]string{geo: echoServer(t, true)}, DrainTimeout: 200 * time.Millisecond, AccessLog: &alog})
	c := dialRaw(t, r.sc.OutboundAddr())
	fmt.Fprintf(c, "GET http://%s/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", geo, geo)
	if resp, err := http.ReadResponse(c.r, nil); err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	c.ping(t)
	r.cancel()
	r.served(t, 10*time.Second)
	if l := alog.String(); !strings.Contains(l, `"path":"/ws"`) || !strings.Contains(l, `"status":101`) || !strings.Contains(l, `"error":"shutdown"`) {
		t.Errorf("the access log of the WebSocket cut by the drain's end:\n%s\nwant its line, status 101 and error shutdown", l)
	}
	if strings.Contains(r.log.String(), "requests still running") {
		t.Error("Serve waited for a request still running after the drain's end")
	}
	if !c.closed() {
		t.Error("the WebSocket is still open after Serve returned")
	}
}

// TestEndDrain: EndDrain (a second SIGTERM) ends the drain at once, as
// its timeout would: the tunnel left is closed and logged as shut down.
func TestEndDrain(t *testing.T) {
	var alog syncBuffer
	r := start(t, sidecar.Config{Resolve: map[string]string{geo: echoServer(t, false)}, DrainTimeout: time.Hour, AccessLog: &alog})
	c := connect(t, r)
	r.cancel()
	if !proxytest.Poll(5*time.Second, 5*time.Millisecond, func() bool {
		code, _ := r.adminGet(t, "/ready")
		return code == 503
	}) {
		t.Fatal("/ready not 503 after the drain began")
	}
	c.ping(t) // the tunnel works on during the drain
	r.sc.EndDrain()
	r.served(t, 10*time.Second)
	if !c.closed() {
		t.Error("the tunnel is still open after Serve returned")
	}
	if l := alog.String(); !strings.Contains(l, `"method":"CONNECT"`) || !strings.Contains(l, `"error":"shutdown"`) {
		t.Errorf("the tunnel's access log line: %s, want error shutdown", l)
	}
}

// TestDrainTunnelJustMade: a tunnel whose 200 has just gone out when the
// drain begins gets the drain's time, as every tunnel does. The drain saw
// only the tunnels whose relay had started: one a moment younger was
// taken for none, and Serve returned under it (about 1 in 5 right after
// the 200, in the built binary).
func TestDrainTunnelJustMade(t *testing.T) {
	echo := echoServer(t, false)
	for range 10 {
		r := start(t, sidecar.Config{Resolve: map[string]string{geo: echo}, DrainTimeout: time.Hour})
		c := connect(t, r)
		r.cancel()
		if !proxytest.Poll(5*time.Second, time.Millisecond, func() bool {
			return strings.Contains(r.log.String(), `"msg":"draining"`)
		}) {
			t.Fatal("no drain")
		}
		c.ping(t)
		c.Close()
		r.served(t, 10*time.Second) // the tunnel was the last connection
	}
}

// TestStopBeforeServing: a sidecar stopped while it waits for the control
// plane's first answer stops at once, and never turns ready. It waited
// out --xds-initial-timeout, then served, said it was ready, and drained.
func TestStopBeforeServing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // a control plane that never answers
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var logs syncBuffer
	sc, err := sidecar.Listen(sidecar.Config{
		OutboundAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		XDSAddress: ln.Addr().String(), XDSInitialTimeout: time.Hour,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sc.Serve(ctx) }()
	// The admin server answers (503) while the sidecar waits.
	if !proxytest.Poll(5*time.Second, 5*time.Millisecond, func() bool {
		code, _ := proxytest.Get("http://" + sc.AdminAddr() + "/ready")
		return code == 503
	}) {
		t.Fatal("the admin server does not answer while the sidecar waits for its policies")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return within 10s of its end, waiting for the control plane")
	}
	if l := logs.String(); strings.Contains(l, "sidecar ready") {
		t.Errorf("the sidecar said it was ready after it was stopped:\n%s", l)
	}
	if !refused(sc.OutboundAddr()) {
		t.Error("the outbound listener still accepts connections")
	}
}

// TestEndDrainCutsYoungRequest: a request only just begun when the drain
// ends is cut and recorded as every request left is (503 shutdown). On
// the lean server a request younger than its watch's delay (100 ms) was
// not cancelled by the server's Close: it ran on, Serve waited 2 s for it
// and closed the access log without its line.
func TestEndDrainCutsYoungRequest(t *testing.T) {
	u := newUpstream(t)
	u.Delay.Store(int64(5 * time.Second))
	var alog syncBuffer
	r := start(t, sidecar.Config{Resolve: map[string]string{geo: u.Host()}, DrainTimeout: time.Hour, AccessLog: &alog})
	res := proxytest.GetAsync(r.client, "http://"+geo+"/")
	u.AwaitRequest(t, 5*time.Second)
	r.cancel()
	r.sc.EndDrain()
	r.served(t, 10*time.Second)
	<-res
	if l := alog.String(); !strings.Contains(l, `"status":503`) || !strings.Contains(l, `"error":"shutdown"`) {
		t.Errorf("the access log of a young request cut by the drain's end:\n%s\nwant status 503 and error shutdown", l)
	}
}

package sidecar_test

import (
	"net"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// TestDrainKeepAlive: a keep-alive connection idle when the drain begins
// is not closed under its client. Its next request, sent after the
// listener has closed, is answered, with "Connection: close", and the
// sidecar stops as soon as that last connection has closed, not at the
// drain timeout. (http.Server.Shutdown closed it at once: the request
// died with EOF.)
func TestDrainKeepAlive(t *testing.T) {
	u := newUpstream(t)
	r := start(t, sidecar.Config{Resolve: map[string]string{geo: u.Host()}, DrainTimeout: 30 * time.Second, DrainIdleGrace: 20 * time.Second})
	c := dialRaw(t, r.sc.OutboundAddr())
	if resp, _ := c.do(t, getGeo); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("before the drain: %d, close %v", resp.StatusCode, resp.Close)
	}

	r.cancel()
	// The listener closes: new connections are refused.
	if !proxytest.Poll(5*time.Second, 5*time.Millisecond, func() bool {
		nc, err := net.DialTimeout("tcp", r.sc.OutboundAddr(), time.Second)
		if err != nil {
			return true
		}
		nc.Close()
		return false
	}) {
		t.Fatal("outbound listener still accepts connections during the drain")
	}
	// Answers say "Connection: close" from just after the listener
	// closed: every request on the kept connection is answered until one
	// says so.
	for i := 0; ; i++ {
		resp, body := c.do(t, getGeo)
		if resp.StatusCode != 200 || body != "hello from geo\n" {
			t.Fatalf("request on the kept connection during the drain: %d %q", resp.StatusCode, body)
		}
		if resp.Close { // "Connection: close" (ReadResponse takes the header out)
			break
		}
		if i == 100 {
			t.Fatalf("no answer with Connection: close in %d requests during the drain (%v)", i+1, resp.Header)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !c.closed() {
		t.Error("the connection stayed open after an answer with Connection: close")
	}
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
		r.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return once the last connection closed (drain timeout 30s, idle grace 20s)")
	}
}

// TestDrainIdleGrace: a connection that stays idle through the drain is
// closed after DrainIdleGrace, not at once and not at the drain timeout.
func TestDrainIdleGrace(t *testing.T) {
	u := newUpstream(t)
	const grace = 300 * time.Millisecond
	r := start(t, sidecar.Config{Resolve: map[string]string{geo: u.Host()}, DrainTimeout: 30 * time.Second, DrainIdleGrace: grace})
	kept := dialRaw(t, r.sc.OutboundAddr())
	kept.do(t, getGeo)
	fresh := dialRaw(t, r.sc.OutboundAddr()) // never sends a request
	began := time.Now()
	r.cancel()
	for _, c := range []*rawConn{kept, fresh} {
		if !c.closed() {
			t.Fatal("an idle connection was not closed during the drain")
		}
		if took := time.Since(began); took < grace {
			t.Errorf("an idle connection closed %v after the drain began, before the %v grace", took, grace)
		}
	}
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
		r.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the idle connections closed (drain timeout 30s)")
	}
}

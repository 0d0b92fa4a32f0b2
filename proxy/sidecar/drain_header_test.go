package sidecar_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// postLarge is a request with a body over the lean loop's 16 KiB: the
// loop hands its connection to net/http's server, which serves the
// connection's next requests.
var postLarge = "POST http://" + geo + "/ HTTP/1.1\r\nHost: " + geo + "\r\nContent-Length: 20000\r\n\r\n" + strings.Repeat("x", 20000)

// TestDrainHeaderArriving: a request whose header lines are still
// arriving when the drain begins, and go on arriving for longer than the
// idle grace, is answered. net/http's server (--server std, and every
// connection the lean loop hands over to it) reports a request only once
// its header block is in, and reads what arrives into its own buffer:
// the drain took the connection for idle and cut it one grace in, with
// no answer.
func TestDrainHeaderArriving(t *testing.T) {
	const (
		grace = 500 * time.Millisecond
		gap   = grace / 4 // between header lines: well under the grace
		lines = 8         // 2 s in all: four graces
	)
	for _, tc := range []struct {
		name, server string
		before       string // a request answered before the drain, on the same connection
	}{
		{name: "lean", server: sidecar.ServerLean},
		{name: "std", server: sidecar.ServerStd},
		{name: "std kept-alive", server: sidecar.ServerStd, before: getGeo},
		{name: "lean handed over", server: sidecar.ServerLean, before: postLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t)
			r := start(t, sidecar.Config{Server: tc.server, Resolve: map[string]string{geo: u.Host()}, DrainTimeout: 30 * time.Second, DrainIdleGrace: grace})
			c := dialRaw(t, r.sc.OutboundAddr())
			if tc.before != "" {
				if resp, _ := c.do(t, tc.before); resp.StatusCode != 200 || resp.Close {
					t.Fatalf("before the drain: %d close %v %v", resp.StatusCode, resp.Close, resp.Header)
				}
			}
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\n", geo, geo); err != nil {
				t.Fatal(err)
			}
			accepted(t, r, 1)
			r.cancel() // SIGTERM: the drain begins
			began := time.Now()
			for i := range lines {
				time.Sleep(gap)
				if _, err := fmt.Fprintf(c, "X-Part-%d: y\r\n", i); err != nil {
					t.Fatalf("header line %d refused %v into the drain: %v", i, time.Since(began), err)
				}
			}
			if _, err := io.WriteString(c, "\r\n"); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(began); took < 2*grace {
				t.Fatalf("the header took %v, under twice the %v grace: the test proves nothing", took, grace)
			}
			resp, err := http.ReadResponse(c.r, nil)
			if err != nil {
				t.Fatalf("no answer to a request being sent when the drain began: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "hello from geo\n" || !resp.Close {
				t.Fatalf("answer %d %q (close %v), want 200 from geo with Connection: close", resp.StatusCode, body, resp.Close)
			}
			r.served(t, 10*time.Second)
		})
	}
}

// TestDrainHeaderTrickle: the drain's bound holds for a client that sends
// a header line now and then and never ends it: it is cut at the drain
// timeout (past several idle graces), and the sidecar stops.
func TestDrainHeaderTrickle(t *testing.T) {
	const (
		grace   = 200 * time.Millisecond
		timeout = 1500 * time.Millisecond
	)
	for _, server := range []string{sidecar.ServerLean, sidecar.ServerStd} {
		t.Run(server, func(t *testing.T) {
			u := newUpstream(t)
			r := start(t, sidecar.Config{Server: server, Resolve: map[string]string{geo: u.Host()}, DrainTimeout: timeout, DrainIdleGrace: grace})
			c := dialRaw(t, r.sc.OutboundAddr())
			if _, err := fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\n", geo, geo); err != nil {
				t.Fatal(err)
			}
			accepted(t, r, 1)
			r.cancel()
			began := time.Now()
			var cut time.Duration
			for i := 0; cut == 0; i++ {
				if i == 200 {
					t.Fatalf("still open %v into a drain with a %v timeout", time.Since(began), timeout)
				}
				time.Sleep(grace / 4)
				if _, err := fmt.Fprintf(c, "X-Part-%d: y\r\n", i); err != nil {
					cut = time.Since(began)
				}
				// The close may show first as a read's end: the write
				// lands in the socket's buffer.
				_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
				if _, err := c.r.ReadByte(); err != nil {
					var ne net.Error
					if !errors.As(err, &ne) || !ne.Timeout() {
						cut = time.Since(began)
					}
				} else {
					t.Fatal("an answer to a request whose header never ended")
				}
			}
			if cut < timeout {
				t.Errorf("cut %v into the drain, before its %v timeout (idle grace %v): the header was arriving", cut, timeout, grace)
			}
			r.served(t, 10*time.Second)
		})
	}
}

// accepted waits until the sidecar has accepted n outbound connections:
// one still in the listener's backlog when the drain closes it is reset,
// not drained.
func accepted(t *testing.T, r *running, n float64) {
	t.Helper()
	if !proxytest.Poll(5*time.Second, 2*time.Millisecond, func() bool {
		v, _ := r.metrics(t).Value("minimesh_connections_open", "listener", "outbound")
		return v >= n
	}) {
		t.Fatal("the sidecar never accepted the connection")
	}
}

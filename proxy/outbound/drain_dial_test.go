package outbound

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// lockedBuffer is an access log's writer read while it is written.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestDrainCutsDials: a redirected connection or a CONNECT tunnel still
// dialling when the drain's time is up is cut by it at once: counted
// result="shutdown" and logged with error shutdown (a tunnel 503, as a
// request the drain cut), once, never as the breaker's failure, and
// recorded before Drain returns. The dial ran on: a relay's was
// recorded after the process had stopped waiting for it (no line, or a
// connect-failure counted by the breaker), a tunnel's as the 499 of an
// app that left when the listener closed its connection, both after
// Drain had waited its 1 s grace in vain.
func TestDrainCutsDials(t *testing.T) {
	const geo = "geo-service:8000"
	hole, _ := proxytest.FullAcceptQueue(t)
	for _, tc := range []struct {
		name      string
		authority string
		// open starts the connection through h; app is the app's side.
		open func(t *testing.T, h *Handler) (app net.Conn)
		want string // in the log line
	}{
		{
			name:      "relay",
			authority: hole,
			open: func(t *testing.T, h *Handler) net.Conn {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				app, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				client, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				done := make(chan struct{})
				t.Cleanup(func() { client.Close(); <-done })
				go func() {
					defer close(done)
					h.ServeTCP(client, TCPConn{Original: netip.MustParseAddrPort(hole), Protocol: "tls"})
				}()
				return app
			},
			want: `"error":"shutdown"`,
		},
		{
			name:      "tunnel",
			authority: geo,
			open: func(t *testing.T, h *Handler) net.Conn {
				srv := httptest.NewServer(h)
				t.Cleanup(srv.Close)
				app, err := net.Dial("tcp", srv.Listener.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(app, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", geo, geo)
				return app
			},
			want: `"status":503`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var alog lockedBuffer
			access := telemetry.NewAccessLog(&alog)
			t.Cleanup(access.Close)
			metrics := telemetry.New(0)
			h := New(Config{Namespace: "default", Metrics: metrics, AccessLog: access, ServiceName: "app",
				ConnectTimeout: 3 * time.Second, Resolve: map[string]string{geo: hole}}, policy.NewTable(nil, "default"))
			dialling := make(chan struct{}, 1)
			h.dialer.connect = func(ctx context.Context, nd *net.Dialer, network, addr string) (net.Conn, error) {
				select {
				case dialling <- struct{}{}:
				default:
				}
				return nd.DialContext(ctx, network, addr)
			}
			app := tc.open(t, h)
			defer app.Close()

			select {
			case <-dialling: // in flight (relays) from before its dial
			case <-time.After(10 * time.Second):
				t.Fatal("the dial did not begin")
			}
			ctx, timeUp := context.WithCancel(context.Background())
			drained := make(chan struct{})
			go func() { h.Drain(ctx); close(drained) }()
			timeUp()
			select {
			case <-drained:
			case <-time.After(10 * time.Second):
				t.Fatal("Drain did not return")
			}
			select {
			case <-h.relays.Idle():
			default:
				t.Error("Drain returned at its grace with the dial still under way: its time up did not end it")
			}
			// Counted before Drain returned.
			var results []string
			for _, l := range strings.Split(string(metrics.Registry.AppendText(nil)), "\n") {
				if strings.HasPrefix(l, "minimesh_tcp_connections_total{") {
					results = append(results, l)
				}
			}
			if len(results) != 1 || !strings.Contains(results[0], `result="shutdown"`) || !strings.HasSuffix(results[0], " 1") {
				t.Errorf("minimesh_tcp_connections_total after Drain: %q, want result=\"shutdown\" 1 alone", results)
			}
			if c := h.dests.get(tc.authority).breaker.Counts(); c.TotalFailures != 0 {
				t.Errorf("the breaker counted the cut dial as a failure: %+v", c)
			}
			// The app's connection is closed unanswered: no 200 whose
			// tunnel would never carry a byte.
			_ = app.SetReadDeadline(time.Now().Add(5 * time.Second))
			if line, err := bufio.NewReader(app).ReadString('\n'); err == nil {
				t.Errorf("the app read %q, want its connection closed", line)
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Error("the app's connection is still open after the drain")
			}

			proxytest.Poll(5*time.Second, 5*time.Millisecond, func() bool { return strings.Contains(alog.String(), "\n") })
			lines := strings.Split(strings.TrimSpace(alog.String()), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], `"error":"shutdown"`) || !strings.Contains(lines[0], tc.want) {
				t.Errorf("access log:\n%s\nwant one line with error shutdown and %s", alog.String(), tc.want)
			}
		})
	}
}

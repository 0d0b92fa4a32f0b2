package inbound

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/connlimit"
	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/proxy/transparent"
	"github.com/minimesh/minimesh/wellknown"
)

// closedPorts returns n loopback ports nothing listens on until the
// test's end: held (refused.Addr), not a closed listener's, which another
// test binary running at the same time may listen on.
func closedPorts(t *testing.T, n int) []netip.AddrPort {
	t.Helper()
	var out []netip.AddrPort
	for range n {
		out = append(out, netip.MustParseAddrPort(refused.Addr(t)))
	}
	return out
}

// TestPortLabelsNeedTheApp: a scan of the pod's closed ports (more of
// them than the inbound labels, telemetry.MaxInbound), by opaque
// connections and by HTTP requests, and connections refused for the
// sidecar's own port, count under "other"; the app's real ports, TCP and
// HTTP, reached afterwards, still get labels of their own. Before
// 2026-12-06 each connect failure took a label: the app's ports were
// "other" for the life of the process.
func TestPortLabelsNeedTheApp(t *testing.T) {
	tcpApp := appServer(t, "")
	httpApp := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(httpApp.Close)
	httpAddr := netip.MustParseAddrPort(httpApp.Listener.Addr().String())
	closed := closedPorts(t, telemetry.MaxInbound+6)
	own := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), wellknown.AdminPort)

	m := telemetry.New(0)
	h := New(Config{Metrics: m, OwnPorts: []uint16{wellknown.AdminPort}, LocalAddr: loopbackIsLocal,
		ConnectTimeout: time.Second, Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(h.CloseIdleConnections)
	var orig atomic.Pointer[netip.AddrPort] // the next HTTP connection's original destination
	front := httptest.NewUnstartedServer(h)
	front.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return h.WithOriginalDst(ctx, *orig.Load())
	}
	front.Start()
	t.Cleanup(front.Close)
	get := func(to netip.AddrPort) int {
		t.Helper()
		orig.Store(&to)
		req, _ := http.NewRequest("GET", front.URL+"/", nil)
		req.Close = true // a connection of its own: its own original destination
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	tcp := func(to netip.AddrPort) {
		t.Helper()
		client, server := tcpPair(t)
		defer client.Close()
		done := make(chan struct{})
		go func() {
			h.ServeTCP(&transparent.Conn{Conn: server, Original: to, Protocol: transparent.Unknown})
			close(done)
		}()
		io.WriteString(client, "hi\n")
		client.(*net.TCPConn).CloseWrite()
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.ReadAll(client)
		<-done
	}

	for i, ap := range closed {
		if i%2 == 0 {
			tcp(ap)
		} else if code := get(ap); code != http.StatusBadGateway {
			t.Fatalf("a request to a closed port: %d, want 502", code)
		}
	}
	for range 3 {
		tcp(own)
	}
	tcp(tcpApp)
	if code := get(httpAddr); code != http.StatusNotFound {
		t.Fatalf("a request to the app: %d, want its 404", code)
	}

	metrics := gather(t, m)
	for _, want := range []string{
		`minimesh_tcp_connections_total{destination="other",direction="inbound",result="connect-failure"} ` + strconv.Itoa((len(closed)+1)/2),
		`minimesh_requests_total{code="502",destination="other",direction="inbound",method="GET"} ` + strconv.Itoa(len(closed)/2),
		`minimesh_tcp_connections_total{destination="other",direction="inbound",result="forbidden"} 3`,
		`minimesh_tcp_connections_total{destination="` + strconv.Itoa(int(tcpApp.Port())) + `",direction="inbound",result="ok"} 1`,
		`minimesh_requests_total{code="404",destination="` + strconv.Itoa(int(httpAddr.Port())) + `",direction="inbound",method="GET"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("want %s in\n%s", want, grep(metrics, `direction="inbound"`))
		}
	}
	for _, ap := range append(closed, own) {
		if p := `destination="` + strconv.Itoa(int(ap.Port())) + `"`; strings.Contains(metrics, p) {
			t.Errorf("the port never reached got a label: %s", grep(metrics, p))
		}
	}

	// Once reached, the port's failures are its own.
	tcpApp2 := appServer(t, "")
	tcp(tcpApp2)
	tcp(tcpApp2)
	if want := `minimesh_tcp_connections_total{destination="` + strconv.Itoa(int(tcpApp2.Port())) + `",direction="inbound",result="ok"} 2`; !strings.Contains(gather(t, m), want) {
		t.Errorf("want %s", want)
	}
}

// TestNoDataBeforeTheApp: a no-data connection that the first-byte limit
// (spent whole in detection), the cap or the drain ended before its relay
// is recorded so without a connection to the app; one whose caller
// closed within the limit is relayed. Before 2026-12-06 each was dialled
// and relayed with a first-byte limit of its own after detection.
func TestNoDataBeforeTheApp(t *testing.T) {
	const limit = 200 * time.Millisecond
	tests := []struct {
		name     string
		detect   time.Duration // how long detection took
		evict    bool          // the cap closed it during detection
		draining bool
		result   string
		dialled  int64 // connections the app accepted
	}{
		{"silent for the whole limit", limit, false, false, "idle-timeout", 0},
		{"evicted during detection", limit / 2, true, false, "evicted", 0},
		{"closed by the drain", limit / 2, false, true, "shutdown", 0},
		{"caller closed without a byte", limit / 2, false, false, "ok", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var accepted atomic.Int64
			appLn, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { appLn.Close() })
			go func() {
				for {
					c, err := appLn.Accept()
					if err != nil {
						return
					}
					accepted.Add(1)
					go func() { io.Copy(io.Discard, c); c.Close() }()
				}
			}()
			app := netip.MustParseAddrPort(appLn.Addr().String())

			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			l := connlimit.New(ln.(*net.TCPListener), 2)
			l.ShareKeepBuffers(0)
			t.Cleanup(func() { l.Close(); l.CloseAll() })
			m := telemetry.New(0)
			h := New(Config{Metrics: m, NoDataIdleTimeout: limit, ConnState: l.ConnState, LocalAddr: loopbackIsLocal,
				Logger: slog.New(slog.DiscardHandler)})
			h.SetDraining(tt.draining)
			dial := func(src string) net.Conn {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
				c, err := d.Dial("tcp", l.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			}
			client := dial("127.0.0.1")
			c, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			if tt.evict {
				// Its address holds both places; a newcomer from another
				// takes the place held longest: c's (connlimit's fair
				// share), which it marks and closes.
				dial("127.0.0.1")
				l.Accept()
				dial("127.0.0.2")
				l.Accept()
				if !connlimit.Evicted(c) {
					t.Fatal("the newcomer did not take the silent connection's place")
				}
			} else {
				client.(*net.TCPConn).CloseWrite()
			}
			h.ServeTCP(&transparent.Conn{Conn: c, Original: app, Protocol: transparent.NoData, Detect: tt.detect})
			series := `minimesh_tcp_connections_total{destination="other",direction="inbound",result="` + tt.result + `"} 1`
			if tt.dialled > 0 {
				series = `minimesh_tcp_connections_total{destination="` + strconv.Itoa(int(app.Port())) + `",direction="inbound",result="` + tt.result + `"} 1`
			}
			if metrics := gather(t, m); !strings.Contains(metrics, series) {
				t.Errorf("want %s in\n%s", series, grep(metrics, "minimesh_tcp_connections"))
			}
			if got := accepted.Load(); got != tt.dialled {
				t.Errorf("the app accepted %d connections, want %d", got, tt.dialled)
			}
		})
	}
}

package inbound

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/connlimit"
	"github.com/minimesh/minimesh/proxy/internal/chanlistener"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/proxy/transparent"
)

// TestEvictedRecorded: a connection the inbound cap closes to give its
// place to a newcomer (connlimit's Share: here the fair share, its
// address holding both places) is recorded as evicted, not as the
// caller's or the app's failure: a relay with result="evicted", a
// request in flight as 503 with error "evicted", an upgraded connection
// as its 101 with result and error "evicted"; the listener counts the
// eviction. Before 2026-12-06 they were a reset, a 499 and a 499 with a
// reset: the sidecar's own limit at work read as the network's failure.
func TestEvictedRecorded(t *testing.T) {
	for _, tc := range []struct {
		name   string
		first  string  // what the evicted connection carries: tcp, request, upgrade
		code   string  // its minimesh_requests_total code; "" none
		result string  // its minimesh_tcp_connections_total result; "" none
		status float64 // its log line's status; 0 none
	}{
		{"relay", "tcp", "", "evicted", 0},
		{"request in flight", "request", "503", "", 503},
		{"upgraded", "upgrade", "101", "evicted", 101},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newEvictRig(t)
			a1 := r.dial(t, "127.0.0.2", tc.first)
			br := bufio.NewReader(a1)
			switch tc.first {
			case "tcp":
				echo(t, a1, br, "hi\n")
			case "request":
				io.WriteString(a1, "GET /slow HTTP/1.1\r\nHost: app\r\n\r\n")
				select {
				case <-r.entered: // the request is in the app: a1 is busy
				case <-time.After(10 * time.Second):
					t.Fatal("the request did not reach the app")
				}
			case "upgrade":
				io.WriteString(a1, "GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
				if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
					t.Fatalf("handshake answer %v, %v: want the 101", resp, err)
				}
				echo(t, a1, br, "hi\n")
			}
			// The address's second place, held after a1's: a1 has been in
			// its state longest.
			a2 := r.dial(t, "127.0.0.2", "tcp")
			echo(t, a2, bufio.NewReader(a2), "hi\n")
			if !proxytest.Poll(10*time.Second, 5*time.Millisecond, func() bool { return r.l.Open() == 2 }) {
				t.Fatalf("%d places held, want 2", r.l.Open())
			}
			n := r.dial(t, "127.0.0.3", "tcp")
			echo(t, n, bufio.NewReader(n), "newcomer\n")
			io.ReadAll(br) // until a1 ends: the eviction closed it
			echo(t, a2, bufio.NewReader(a2), "again\n")

			var ms proxytest.Metrics
			done := func() bool {
				var err error
				ms, err = proxytest.ParseMetrics(gather(t, r.m))
				if err != nil {
					t.Fatal(err)
				}
				if tc.code != "" {
					_, ok := ms.Value("minimesh_requests_total", "destination", r.httpPort)
					return ok
				}
				_, ok := ms.Value("minimesh_tcp_connections_total", "destination", r.tcpPort)
				return ok
			}
			if !proxytest.Poll(10*time.Second, 10*time.Millisecond, done) {
				t.Fatal("the evicted connection was not recorded within 10s")
			}
			if tc.code != "" {
				if v, _ := ms.Value("minimesh_requests_total", "destination", r.httpPort, "code", tc.code); v != 1 {
					t.Errorf("minimesh_requests_total{code=%q} = %v, want 1; all: %v", tc.code, v, series(ms, "minimesh_requests_total"))
				}
			}
			if tc.result != "" {
				port := r.tcpPort
				if tc.first == "upgrade" {
					port = r.httpPort
				}
				if v, _ := ms.Value("minimesh_tcp_connections_total", "destination", port, "result", tc.result); v != 1 {
					t.Errorf("minimesh_tcp_connections_total{result=%q} = %v, want 1; all: %v", tc.result, v, series(ms, "minimesh_tcp_connections_total"))
				}
			}
			if got := r.l.Evicted(); got != 1 {
				t.Errorf("the listener counted %d evictions, want 1", got)
			}
			// The evicted connection's log line is the one with an error
			// (the others are still open: theirs come later).
			var lines []map[string]any
			for _, l := range (&rig{log: r.log, logOut: r.logOut}).logLines(t) {
				if l["error"] != nil {
					lines = append(lines, l)
				}
			}
			if len(lines) != 1 || lines[0]["error"] != "evicted" {
				t.Fatalf("log lines with an error: %v; want one, error evicted", lines)
			}
			if status, ok := lines[0]["status"].(float64); status != tc.status || ok != (tc.status != 0) {
				t.Errorf("its status %v, want %v", lines[0]["status"], tc.status)
			}
		})
	}
}

// evictRig is the inbound handler behind a listener of 2 places shared as
// the sidecar shares them (ShareKeepBuffers), served as NewServer serves
// it: each connection taken for detection, then either an HTTP/1.x one
// for the http.Server (its context from withCaller, NewServer's
// ConnContext) or a relay (ServeTCP). kinds says which, connection by
// connection.
type evictRig struct {
	h                 *Handler
	l                 *connlimit.Listener
	m                 *telemetry.Metrics
	log               *telemetry.AccessLog
	logOut            *syncBuffer
	kinds             chan string
	entered           chan struct{}
	httpPort, tcpPort string
}

func newEvictRig(t *testing.T) *evictRig {
	t.Helper()
	r := &evictRig{m: telemetry.New(0), logOut: &syncBuffer{}, kinds: make(chan string, 1), entered: make(chan struct{}, 1)}
	r.log = telemetry.NewAccessLog(r.logOut)
	ws := switchingApp(func(c net.Conn, br *bufio.Reader) { io.Copy(c, br) })
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/slow":
			r.entered <- struct{}{}
			<-req.Context().Done() // until the sidecar gives up on it
		case "/ws":
			ws.ServeHTTP(w, req)
		}
	}))
	t.Cleanup(app.Close)
	httpApp := netip.MustParseAddrPort(app.Listener.Addr().String())
	tcpApp := appServer(t, "")
	r.httpPort, r.tcpPort = strconv.Itoa(int(httpApp.Port())), strconv.Itoa(int(tcpApp.Port()))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.l = connlimit.New(ln.(*net.TCPListener), 2)
	r.l.ShareKeepBuffers(0)
	r.h = New(Config{Metrics: r.m, AccessLog: r.log, ConnState: r.l.ConnState, LocalAddr: loopbackIsLocal,
		TCPIdleTimeout: time.Minute, Logger: slog.New(slog.DiscardHandler)})
	hl := chanlistener.New(ln.Addr().String())
	srv := &http.Server{
		Handler: r.h,
		ConnState: func(c net.Conn, st http.ConnState) {
			if tc, ok := transparent.Under(c); ok {
				r.l.ConnState(tc.Conn, st)
			}
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			tc, _ := transparent.Under(c)
			return r.h.withCaller(ctx, tc)
		},
	}
	go srv.Serve(hl)
	go func() {
		for {
			c, err := r.l.Accept()
			if err != nil {
				return
			}
			r.l.ConnState(c, http.StateHijacked) // as the dispatcher, for detection
			if <-r.kinds == "tcp" {
				go r.h.ServeTCP(&transparent.Conn{Conn: c, Original: tcpApp, Protocol: transparent.Unknown})
				continue
			}
			hl.Put(&transparent.Conn{Conn: c, Original: httpApp, Protocol: transparent.HTTP1})
		}
	}()
	t.Cleanup(func() {
		r.l.Close()
		r.l.CloseAll()
		srv.Close()
		r.h.CloseIdleConnections()
	})
	return r
}

// dial connects from the loopback address src, the connection to be
// served as kind ("tcp": a relay; else HTTP).
func (r *evictRig) dial(t *testing.T, src, kind string) net.Conn {
	t.Helper()
	r.kinds <- kind
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", r.l.Addr().String())
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second)) // bounds a failing test only
	return c
}

// echo sends s on c and reads it back.
func echo(t *testing.T, c net.Conn, br *bufio.Reader, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatalf("write %q: %v", s, err)
	}
	b := make([]byte, len(s))
	if _, err := io.ReadFull(br, b); err != nil || string(b) != s {
		t.Fatalf("echo of %q: %q, %v", s, b, err)
	}
}

// series lists ms's samples named name, for a failure's message.
func series(ms proxytest.Metrics, name string) []proxytest.Sample {
	var out []proxytest.Sample
	for _, s := range ms {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

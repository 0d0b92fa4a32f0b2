package inbound

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/connlimit"
	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/proxy/transparent"
)

// appServer is an app on loopback: greet, when set, is written as each
// connection is accepted (a server-speaks-first protocol); then it echoes
// what it reads until its peer's end.
func appServer(t *testing.T, greet string) netip.AddrPort {
	t.Helper()
	return tcpApp(t, func(c net.Conn) {
		if greet != "" {
			io.WriteString(c, greet)
		}
		io.Copy(c, c)
	})
}

// TestNoDataIdleLimit: a no-data connection (the caller sent nothing
// within detection) on which neither side sends a byte is closed after
// NoDataIdleTimeout, counted idle-timeout; from the first byte either way
// (the app's greeting, the caller's late first bytes) it is relayed as
// any other, past that limit. Before 2026-12-06 it lived the 1 h TCP idle
// limit, holding a place under the inbound cap.
func TestNoDataIdleLimit(t *testing.T) {
	const limit = 100 * time.Millisecond
	tests := []struct {
		name   string
		greet  string // the app's first words
		first  string // the caller's, once relayed
		want   string // what the caller reads in all
		result string
	}{
		{"neither side speaks", "", "", "", "idle-timeout"},
		{"the app speaks first", "220 ready\n", "", "220 ready\nlater\n", "ok"},
		{"the caller speaks after detection", "", "hello\n", "hello\nlater\n", "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app := appServer(t, tt.greet)
			m := telemetry.New(0)
			h := New(Config{Metrics: m, NoDataIdleTimeout: limit, TCPIdleTimeout: time.Minute, LocalAddr: loopbackIsLocal,
				Logger: slog.New(slog.DiscardHandler)})
			client, server := tcpPair(t)
			defer client.Close()
			done := make(chan struct{})
			go func() {
				h.ServeTCP(&transparent.Conn{Conn: server, Original: app, Protocol: transparent.NoData})
				close(done)
			}()
			client.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(client)
			var got strings.Builder
			if tt.greet != "" || tt.first != "" {
				io.WriteString(client, tt.first)
				line, err := br.ReadString('\n')
				got.WriteString(line)
				if err != nil {
					t.Fatalf("first exchange: %q, %v", line, err)
				}
				// Past the no-data limit: a relay that has spoken lives on.
				time.Sleep(3 * limit)
				if _, err := io.WriteString(client, "later\n"); err != nil {
					t.Fatalf("write after the no-data limit: %v", err)
				}
				client.(*net.TCPConn).CloseWrite()
			}
			rest, err := io.ReadAll(br)
			got.Write(rest)
			if got.String() != tt.want {
				t.Errorf("caller read %q (%v), want %q", got.String(), err, tt.want)
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the relay did not end")
			}
			series := `minimesh_tcp_connections_total{destination="` + strconv.Itoa(int(app.Port())) + `",direction="inbound",result="` + tt.result + `"} 1`
			if metrics := gather(t, m); !strings.Contains(metrics, series) {
				t.Errorf("want %s in\n%s", series, grep(metrics, "minimesh_tcp_connections"))
			}
		})
	}
}

// TestNoDataEvictedFirst: at the inbound cap (connlimit's Share, as the
// sidecar builds it), a newcomer from another address takes the place of
// a no-data relay on which nothing has moved, not that of a busy relay of
// the address holding the most places. Before 2026-12-06 a no-data relay
// was a busy connection for the cap: one of the busy address's relays was
// cut.
func TestNoDataEvictedFirst(t *testing.T) {
	const max = 8
	app := appServer(t, "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := connlimit.New(ln.(*net.TCPListener), max)
	l.ShareKeepBuffers(max)
	t.Cleanup(func() { l.Close(); l.CloseAll() })
	waiting := make(chan struct{}, max) // a no-data relay told the cap it waits
	connState := func(c net.Conn, st http.ConnState) {
		l.ConnState(c, st)
		if st == http.StateNew {
			waiting <- struct{}{}
		}
	}
	h := New(Config{NoDataIdleTimeout: time.Minute, ConnState: connState, LocalAddr: loopbackIsLocal, Logger: slog.New(slog.DiscardHandler)})
	silent := netip.MustParseAddr("127.0.0.2")
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			// As the dispatcher: hijacked for detection, then a relay.
			l.ConnState(c, http.StateHijacked)
			proto := transparent.Unknown
			if netip.MustParseAddrPort(c.RemoteAddr().String()).Addr() == silent {
				proto = transparent.NoData
			}
			go h.ServeTCP(&transparent.Conn{Conn: c, Original: app, Protocol: proto})
		}
	}()
	dial := func(src string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatalf("dial from %s: %v", src, err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(20 * time.Second))
		return c
	}
	echo := func(c net.Conn, s string) error {
		if _, err := io.WriteString(c, s); err != nil {
			return err
		}
		b := make([]byte, len(s))
		_, err := io.ReadFull(c, b)
		return err
	}
	for range 3 {
		dial(silent.String())
	}
	for range 3 {
		select {
		case <-waiting:
		case <-time.After(10 * time.Second):
			t.Fatal("the no-data relays did not start")
		}
	}
	var busy []net.Conn
	for range max - 3 {
		c := dial("127.0.0.3")
		if err := echo(c, "hi\n"); err != nil {
			t.Fatal(err)
		}
		busy = append(busy, c)
	}
	for deadline := time.Now().Add(10 * time.Second); l.Open() < max; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d places held, want %d", l.Open(), max)
		}
	}
	// A no-data relay is a waiting connection for the cap 1 s after it
	// said so (connlimit's newGrace): this waits for that grace to pass;
	// the assertions below are on what the newcomer then does.
	time.Sleep(1500 * time.Millisecond)
	if err := echo(dial("127.0.0.9"), "newcomer\n"); err != nil {
		t.Fatalf("the newcomer from another address: %v", err)
	}
	for i, c := range busy {
		if err := echo(c, "again\n"); err != nil {
			t.Errorf("busy relay %d was cut for the newcomer: %v", i, err)
		}
	}
	if l.Refused() != 0 {
		t.Errorf("%d connections refused", l.Refused())
	}
}

// TestInboundBodyIdle: an inbound request whose caller stops sending its
// body while the app waits for it is answered 408 after
// RequestBodyTimeout, and its place is freed (the connection closes), as
// on the outbound listener; a body whose bytes keep coming is not cut. Before 2026-12-06 a
// stalled body had no limit.
func TestInboundBodyIdle(t *testing.T) {
	const limit = 200 * time.Millisecond
	tests := []struct {
		name   string
		pauses int           // 1-byte pieces of the body after the first 3
		gap    time.Duration // between them
		status string
	}{
		{"stalled", 0, 0, "408"},
		{"trickled", 7, limit / 4, "200"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if _, err := io.ReadAll(r.Body); err != nil {
					return
				}
				w.WriteHeader(http.StatusOK)
			})
			rg := newRig(t, app, Config{RequestBodyTimeout: limit})
			c, err := net.Dial("tcp", rg.front)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nabc")
			for range tt.pauses {
				time.Sleep(tt.gap)
				io.WriteString(c, "x")
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			resp.Body.Close()
			if got := strconv.Itoa(resp.StatusCode); got != tt.status {
				t.Errorf("status %s, want %s", got, tt.status)
			}
			if tt.status == "408" && !resp.Close {
				t.Error("a 408 without Connection: close: the connection keeps its place")
			}
		})
	}
}

package outbound

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestHijackedStatus: a status written on a hijacked connection, past
// the held status (heldstatus.Writer), leaves nothing for the handler to
// send after it. A CONNECT tunnel writes its 200 on the server's own
// ResponseWriter, never wrapped (serveConnect comes before the request's
// state): the server logs nothing, the access log says 200 ok. An
// upgrade the ReverseProxy splices itself (the handler's relay takes
// those whose upstream connection it knows: relayUpgrade) writes its 101
// on the connection countingWriter.Hijack took; the status held was then
// committed as the handler returned, a 200 on the hijacked connection,
// which net/http refuses with a log line ("http: response.WriteHeader on
// hijacked connection"). Hijack now marks the status bypassed, as
// inbound's does.
func TestHijackedStatus(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, serverLog io.Writer)
	}{
		{"CONNECT tunnel", connectThroughHandler},
		{"upgrade spliced by the ReverseProxy", upgradeSplicedByReverseProxy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var serverLog lockedBuffer
			tc.run(t, &serverLog)
			if got := serverLog.String(); got != "" {
				t.Errorf("the server logged %q, want nothing", got)
			}
		})
	}
}

// echoUpstream accepts connections and echoes what they send.
func echoUpstream(t *testing.T) string {
	t.Helper()
	addr, _ := proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		_, _ = io.Copy(c, c)
	})
	return addr
}

func connectThroughHandler(t *testing.T, serverLog io.Writer) {
	up := echoUpstream(t)
	var access lockedBuffer
	al := telemetry.NewAccessLog(&access)
	h := New(Config{Metrics: telemetry.New(0), AccessLog: al, Resolve: map[string]string{"vault:443": up}}, policy.NewTable(nil, "default"))
	done := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		h.ServeHTTP(w, r)
	}))
	srv.Config.ErrorLog = log.New(serverLog, "", 0)
	srv.Start()
	t.Cleanup(srv.Close)

	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "CONNECT vault:443 HTTP/1.1\r\nHost: vault:443\r\n\r\nping"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT answered %d, want 200", resp.StatusCode)
	}
	echo := make([]byte, 4)
	if _, err := io.ReadFull(br, echo); err != nil || string(echo) != "ping" {
		t.Fatalf("through the tunnel: %q, %v; want the echo of ping", echo, err)
	}
	<-done // the handler has returned: whatever it would write, it wrote
	c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	h.Drain(ctx) // the tunnel ended, and was recorded
	if ctx.Err() != nil {
		t.Fatal("the tunnel did not end")
	}
	al.Close()
	var e struct {
		Status int    `json:"status"`
		Error  string `json:"error"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(access.String())), &e); err != nil {
		t.Fatalf("access log %q: %v", access.String(), err)
	}
	if e.Status != http.StatusOK || e.Error != "" {
		t.Errorf("access log status %d, error %q; want 200 and none", e.Status, e.Error)
	}
}

func upgradeSplicedByReverseProxy(t *testing.T, serverLog io.Writer) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(c, brw) // echo until the client closes
	}))
	t.Cleanup(up.Close)
	target, err := url.Parse(up.URL)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) }}
	done := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		// What serve does around the ReverseProxy: the status held in a
		// countingWriter, committed once it returns.
		out := &countingWriter{}
		out.ResponseWriter = w
		rp.ServeHTTP(out, r)
		out.Commit()
	}))
	srv.Config.ErrorLog = log.New(serverLog, "", 0)
	srv.Start()
	t.Cleanup(srv.Close)

	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\nping"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade answered %d, want 101", resp.StatusCode)
	}
	echo := make([]byte, 4)
	if _, err := io.ReadFull(br, echo); err != nil || string(echo) != "ping" {
		t.Fatalf("through the upgraded connection: %q, %v; want the echo of ping", echo, err)
	}
	c.Close() // the splice ends, the ReverseProxy returns, the handler commits
	<-done
}

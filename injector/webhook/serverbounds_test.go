package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// boundedServer runs a Server with a webhook listener capped at
// maxConns, and returns its addresses.
func boundedServer(t *testing.T, maxConns int) (webhook, admin net.Addr) {
	t.Helper()
	_, webhook, admin = serverWith(t, func(s *Server) { s.MaxConnections = maxConns })
	return webhook, admin
}

// serverWith runs a Server that set has changed, and returns it with its
// addresses.
func serverWith(t *testing.T, set func(*Server)) (s *Server, webhook, admin net.Addr) {
	t.Helper()
	dir := t.TempDir()
	selfSigned(t, dir)
	s = &Server{
		WebhookAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"),
		Inject: newHandler(), Metrics: NewMetrics(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	set(s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("Run did not return")
		}
	})
	webhook, admin = listening(t, s)
	return s, webhook, admin
}

// TestHeaderBound: a request header over maxHeaderBytes is refused (431)
// on both ports. Before, net/http's default of 1 MiB applied, and 300
// connections sending that much without the header's end took the
// controller to 489 MB.
func TestHeaderBound(t *testing.T) {
	w, a := boundedServer(t, 0)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer client.CloseIdleConnections()
	for _, tt := range []struct {
		url  string
		pad  int
		want int
	}{
		{"https://" + w.String() + "/healthz", 4 << 10, http.StatusOK},
		{"https://" + w.String() + "/healthz", maxHeaderBytes + 4<<10, http.StatusRequestHeaderFieldsTooLarge},
		{"http://" + a.String() + "/healthz", 4 << 10, http.StatusOK},
		{"http://" + a.String() + "/healthz", maxHeaderBytes + 4<<10, http.StatusRequestHeaderFieldsTooLarge},
	} {
		req, _ := http.NewRequest(http.MethodGet, tt.url, nil)
		req.Header.Set("X-Pad", strings.Repeat("x", tt.pad))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s with a %d-byte header: %v", tt.url, tt.pad, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s with a %d-byte header: %d, want %d", tt.url, tt.pad, resp.StatusCode, tt.want)
		}
	}
}

// TestH2Settings: the webhook's HTTP/2 bounds what one connection holds:
// 16 streams (net/http's default 250), each header list at most
// maxHeaderBytes (1 MiB).
func TestH2Settings(t *testing.T) {
	w, _ := boundedServer(t, 0)
	c, err := tls.Dial("tcp", w.String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q", p)
	}
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok {
		t.Fatalf("first frame %v, want SETTINGS", f)
	}
	for id, want := range map[http2.SettingID]uint32{
		http2.SettingMaxConcurrentStreams: maxStreamsPerConn,
		// net/http adds room for ten fields' overhead of 32 bytes.
		http2.SettingMaxHeaderListSize: maxHeaderBytes + 320,
	} {
		if v, ok := sf.Value(id); !ok || v != want {
			t.Errorf("%v = %d (sent: %v), want %d", id, v, ok, want)
		}
	}
}

// TestWebhookConnCap: one peer address holds at most its share of the
// webhook's places (one more is reset as soon as accepted, and counted);
// at the cap a newcomer from another address takes the place of one of
// the address holding the most (counted as evicted), and the listener
// never holds more than its cap. Before, the cap alone applied, and
// whoever held every place kept everyone else out.
func TestWebhookConnCap(t *testing.T) {
	s, w, a := serverWith(t, func(s *Server) { s.MaxConnections, s.perSource = 4, 2 })
	dial := func(from string) (*tls.Conn, error) {
		d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := tls.DialWithDialer(d, "tcp", w.String(), &tls.Config{InsecureSkipVerify: true})
		if err == nil {
			// A TLS 1.3 server's refusal can come after the client's
			// handshake ends: one read tells.
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, rerr := c.Read(make([]byte, 1)); rerr != nil && !isTimeout(rerr) {
				c.Close()
				return nil, rerr
			}
			c.SetReadDeadline(time.Time{})
		}
		return c, err
	}
	var held []*tls.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for _, tt := range []struct {
		from   string
		served bool
	}{
		{"127.0.0.2", true}, {"127.0.0.2", true},
		{"127.0.0.2", false},                     // past its address's share
		{"127.0.0.3", true}, {"127.0.0.3", true}, // the cap
		{"127.0.0.4", true}, // takes the place of one of 127.0.0.2's or .3's
	} {
		c, err := dial(tt.from)
		if (err == nil) != tt.served {
			t.Fatalf("a connection from %s: err %v, want served %v", tt.from, err, tt.served)
		}
		if c != nil {
			held = append(held, c)
		}
	}
	m := metrics(t, a)
	for _, want := range []string{"minimesh_injector_connections_refused_total 1\n", "minimesh_injector_connections_evicted_total 1\n", "minimesh_injector_connections 4\n"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if n := s.webhookLn.Open(); n != 4 {
		t.Errorf("the listener holds %d connections, want its cap 4", n)
	}
}

// metrics is the admin port's /metrics.
func metrics(t *testing.T, admin net.Addr) string {
	t.Helper()
	resp, err := http.Get("http://" + admin.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

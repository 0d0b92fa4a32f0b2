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
	dir := t.TempDir()
	selfSigned(t, dir)
	s := &Server{
		WebhookAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"),
		Inject: newHandler(), Metrics: NewMetrics(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxConnections: maxConns,
	}
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
	return listening(t, s)
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

// TestWebhookConnCap: past MaxConnections a connection is reset as soon
// as it is accepted, and counted; a place freed is taken again. Before,
// the webhook listener held as many as came.
func TestWebhookConnCap(t *testing.T) {
	w, a := boundedServer(t, 2)
	dial := func() (*tls.Conn, error) {
		d := &net.Dialer{Timeout: 10 * time.Second}
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
	first, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	second, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if c, err := dial(); err == nil {
		c.Close()
		t.Fatal("a third connection was served, want it reset")
	}
	metrics := func() string {
		resp, err := http.Get("http://" + a.String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	m := metrics()
	for _, want := range []string{"minimesh_injector_connections_refused_total 1\n", "minimesh_injector_connections 2\n"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	first.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c, err := dial()
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a place freed was not taken again: %v", err)
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

package inbound

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/connlimit"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestServerRefusesDirect: the inbound listener serves only connections
// iptables redirected to it. One made to the listener itself (here: no
// NAT at all, so no original destination other than the listener) is
// reset at once, whatever it sends, and counted as forbidden (under
// "other": the listener's own port never gets a label); an HTTP
// request on it gets no answer. Close ends Serve and Drain returns.
func TestServerRefusesDirect(t *testing.T) {
	m := telemetry.New(0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := connlimit.New(ln.(*net.TCPListener), 4)
	h := New(Config{Metrics: m, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s := NewServer(cl, h, ServerConfig{})
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()

	for _, send := range []string{"GET /debug/pprof/ HTTP/1.1\r\nHost: x\r\n\r\n", "", "\x16\x03\x01"} {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			// On loopback the reset can beat connect's own return.
			if !strings.Contains(err.Error(), "reset") {
				t.Fatal(err)
			}
			continue
		}
		_, werr := io.WriteString(c, send)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		c.Close()
		// The reset is reported once: to the write when it came first.
		if len(b) > 0 || !isReset(werr) && !isReset(err) {
			t.Errorf("after %q: wrote (%v), read %q (%v); want a reset and nothing else", send, werr, b, err)
		}
	}
	metrics := gather(t, m)
	if want := `minimesh_tcp_connections_total{destination="other",direction="inbound",result="forbidden"} 3`; !strings.Contains(metrics, want) {
		t.Errorf("want %s in\n%s", want, grep(metrics, "minimesh_tcp"))
	}
	for deadline := time.Now().Add(5 * time.Second); cl.Open() != 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
	}
	if n := cl.Open(); n != 0 {
		t.Errorf("%d connections still hold places under the cap", n)
	}

	s.Close()
	select {
	case err := <-served:
		if err == nil {
			t.Error("Serve returned nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if left := s.Drain(ctx, 50*time.Millisecond); left != 0 {
		t.Errorf("drain left %d connections", left)
	}
}

// isReset reports whether err is the peer's reset.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

package sidecar_test

import (
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

// fullPipe is a pipe whose read end nobody reads, already full: a write
// to it blocks, as to a stdout whose reader stopped (a container
// runtime's blocking log driver). The read end is closed at the test's
// end, which ends the blocked write with EPIPE.
func fullPipe(t *testing.T) *os.File {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	if err := w.SetWriteDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatalf("a pipe without deadlines: %v", err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := w.Write(chunk); errors.Is(err, os.ErrDeadlineExceeded) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.SetWriteDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	return w
}

// TestShutdownWithStdoutBlocked: a sidecar whose stdout nobody reads
// stops on SIGTERM all the same, within the access log's 2 s at
// shutdown, and says how many lines it lost. It waited for the write for
// good: still alive 28 s after SIGTERM, in flushTelemetry's
// AccessLog.Close.
func TestShutdownWithStdoutBlocked(t *testing.T) {
	u := newUpstream(t)
	r := start(t, sidecar.Config{Resolve: map[string]string{geo: u.Host()}, DrainTimeout: time.Second, AccessLog: fullPipe(t)})
	code, body := r.adminGet(t, "/metrics")
	if code != 200 || !strings.Contains(body, "\nminimesh_access_log_lines_dropped_total 0\n") {
		t.Errorf("/metrics: %d, want minimesh_access_log_lines_dropped_total at 0:\n%s", code, body)
	}
	if resp := r.get(t); resp.StatusCode != 200 {
		t.Fatalf("GET through the sidecar: %d", resp.StatusCode)
	}
	r.client.Transport.(*http.Transport).CloseIdleConnections()
	r.cancel()
	r.served(t, 10*time.Second)
	if l := r.log.String(); !strings.Contains(l, "access log lines lost at shutdown") || !strings.Contains(l, "1 lines not written") {
		t.Errorf("the sidecar's log does not say the request's line was lost:\n%s", l)
	}
}

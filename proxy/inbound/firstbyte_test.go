package inbound

import (
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/proxy/transparent"
)

// TestNoDataClosedAtLimit: a no-data relay on which neither side says
// anything is closed at NoDataIdleTimeout (--inbound-first-byte-timeout),
// not before it (the limit's own timer is what closes it) and not long
// after, and recorded idle-timeout, in the metric and the log line; the
// limit is the flag's figure, or 10 s when unset.
func TestNoDataClosedAtLimit(t *testing.T) {
	for _, tc := range []struct {
		set, want time.Duration
	}{{0, 10 * time.Second}, {250 * time.Millisecond, 250 * time.Millisecond}, {time.Hour, time.Hour}} {
		if got := New(Config{NoDataIdleTimeout: tc.set, LocalAddr: loopbackIsLocal}).noDataIdle(); got != tc.want {
			t.Errorf("NoDataIdleTimeout %v: the limit is %v, want %v", tc.set, got, tc.want)
		}
	}

	const limit = 250 * time.Millisecond
	app := appServer(t, "") // silent until spoken to
	m := telemetry.New(0)
	out := &syncBuffer{}
	log := telemetry.NewAccessLog(out)
	h := New(Config{Metrics: m, AccessLog: log, NoDataIdleTimeout: limit, TCPIdleTimeout: time.Hour, LocalAddr: loopbackIsLocal,
		Logger: slog.New(slog.DiscardHandler)})
	client, server := tcpPair(t)
	client.SetDeadline(time.Now().Add(30 * time.Second)) // bounds a failing test only
	done := make(chan struct{})
	start := time.Now()
	go func() {
		h.ServeTCP(&transparent.Conn{Conn: server, Original: app, Protocol: transparent.NoData})
		close(done)
	}()
	b, err := io.ReadAll(client) // until the sidecar closes it
	took := time.Since(start)
	if len(b) != 0 {
		t.Errorf("the caller read %q, want nothing", b)
	}
	if took < limit || took > limit+5*time.Second {
		t.Errorf("closed after %v (%v), want at %v (and within 5 s of it on a loaded machine)", took, err, limit)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not end")
	}
	series := `minimesh_tcp_connections_total{destination="` + strconv.Itoa(int(app.Port())) + `",direction="inbound",result="idle-timeout"} 1`
	if metrics := gather(t, m); !strings.Contains(metrics, series) {
		t.Errorf("want %s in\n%s", series, grep(metrics, "minimesh_tcp_connections"))
	}
	lines := (&rig{log: log, logOut: out}).logLines(t)
	if len(lines) != 1 || lines[0]["error"] != "idle-timeout" || lines[0]["protocol"] != "no-data" {
		t.Errorf("log lines %v, want one, protocol no-data, error idle-timeout", lines)
	}
}

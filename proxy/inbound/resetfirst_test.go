package inbound

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/minimesh/minimesh/proxy/telemetry"
	"github.com/minimesh/minimesh/proxy/transparent"
)

// TestResetBeforeFirstByteNotDialled: a caller that resets its connection
// before its first byte (detection met the reset: ReadErr) is not
// connected to the app for nothing, as Envoy's and Linkerd's detection
// do not: it was, the app read an orderly end, and the relay logged
// no-data without an error. It ends reset in the metric and the log line.
func TestResetBeforeFirstByteNotDialled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	app := netip.MustParseAddrPort(ln.Addr().String())
	m := telemetry.New(0)
	out := &syncBuffer{}
	log := telemetry.NewAccessLog(out)
	h := New(Config{Metrics: m, AccessLog: log, LocalAddr: loopbackIsLocal, Logger: slog.New(slog.DiscardHandler)})
	_, server := tcpPair(t)
	h.ServeTCP(&transparent.Conn{Conn: server, Original: app, Protocol: transparent.NoData, ReadErr: syscall.ECONNRESET})

	// ServeTCP has returned: a connection it made to the app is queued.
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var aerr error
	if err := rc.Control(func(fd uintptr) {
		var nfd int
		if nfd, _, aerr = syscall.Accept4(int(fd), syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC); aerr == nil {
			syscall.Close(nfd)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if aerr == nil {
		t.Error("the app was connected to for a caller that reset before a byte")
	} else if !errors.Is(aerr, syscall.EAGAIN) {
		t.Fatal(aerr)
	}
	series := `minimesh_tcp_connections_total{destination="other",direction="inbound",result="reset"} 1`
	if metrics := gather(t, m); !strings.Contains(metrics, series) {
		t.Errorf("want %s in\n%s", series, grep(metrics, "minimesh_tcp_connections"))
	}
	lines := (&rig{log: log, logOut: out}).logLines(t)
	if len(lines) != 1 || lines[0]["error"] != "reset" || lines[0]["protocol"] != "no-data" || lines[0]["original_dst"] != app.String() {
		t.Errorf("log lines %v, want one, protocol no-data, error reset, original_dst %s", lines, strconv.Quote(app.String()))
	}
}

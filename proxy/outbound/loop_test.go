package outbound_test

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestRefuseLoop: a sidecar the init rules do not exempt (not run as
// --proxy-uid) has its own upstream connection redirected back to its
// listener. RefuseLoop tells it by its source, the local address of a
// connection the sidecar dialled, and resets it at its first return,
// counted loop and logged at error level with the cause (also when its
// dial has not returned yet: TestOwnConnsBeforeTheDialReturns); a relay that
// followed it again made one hop per free place of the listener. An
// app's own connection to the listener is not refused.
func TestRefuseLoop(t *testing.T) {
	r := &rig{t: t, metrics: telemetry.New(0), log: &accessLog{}}
	r.access = telemetry.NewAccessLog(r.log)
	t.Cleanup(r.access.Close)
	errs := &accessLog{}
	r.h = outbound.New(outbound.Config{
		Namespace: "default", Metrics: r.metrics, AccessLog: r.access, ConnectTimeout: time.Second,
		ServiceName: "app", Logger: slog.New(slog.NewJSONHandler(errs, nil)),
	}, policy.NewTable(nil, "default"))

	// The sidecar's own listener, where the rules send its connections back.
	back, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	orig := netip.MustParseAddrPort(back.Addr().String())

	// An app's connection, redirected and relayed: the sidecar dials orig.
	app, err := net.Dial("tcp", r.tcpListener(outbound.TCPConn{Original: orig, Protocol: "unknown"}))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	_ = app.SetDeadline(time.Now().Add(10 * time.Second)) // bounds a failing test only
	// The app sends nothing: bytes on their way up when the reset comes
	// let the relay's write take the reset (the socket reports it once)
	// and its read an orderly end, which it may pass on before the reset
	// (1 run in 40 under -race): a relay race of its own, not the loop's.
	own, err := back.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if !r.h.RefuseLoop(own, orig) {
		t.Fatalf("the sidecar's own connection from %s came back and was not refused", own.RemoteAddr())
	}
	// The reset reaches the app through the first hop's relay.
	if b, err := io.ReadAll(app); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the app read %q, %v; want a reset", b, err)
	}
	r.waitMetric(1, "minimesh_tcp_connections_total", "direction", "outbound", "destination", orig.String(), "result", "loop")
	// The first hop ends reset, or connect-failure when the reset came
	// before its dial had returned (refused while its dial was under way).
	r.lines(2)
	first := 0.0
	for _, result := range []string{"reset", "connect-failure"} {
		first += r.metric("minimesh_tcp_connections_total", "direction", "outbound", "destination", orig.String(), "result", result)
	}
	if first != 1 {
		t.Errorf("the app's connection counted %v times as reset or connect-failure, want once:\n%s", first, r.logText())
	}
	errs.mu.Lock()
	got := errs.b.String()
	errs.mu.Unlock()
	if !strings.Contains(got, `"level":"ERROR"`) || !strings.Contains(got, "the sidecar's own connection came back to it") || !strings.Contains(got, "--proxy-uid") {
		t.Errorf("the error log says %q; want the cause at error level", got)
	}

	// Not the sidecar's: an app's connection is left alone.
	other, err := net.Dial("tcp", back.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	in, err := back.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if r.h.RefuseLoop(in, orig) {
		t.Errorf("an app's connection from %s was refused as a loop", in.RemoteAddr())
	}
}

// TestServeTCPResetBeforeFirstByte: an app that resets its connection
// before its first byte (detection met the reset: DetectErr) reaches no
// upstream: it was dialled and passed on as an orderly end, logged
// no-data without an error. It ends reset, without a dial, in the metric
// and the log line.
func TestServeTCPResetBeforeFirstByte(t *testing.T) {
	r := newRig(t, "", 0)
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	orig := netip.MustParseAddrPort(up.Addr().String())
	client, server := net.Pipe()
	defer client.Close()
	r.h.ServeTCP(&detected{Conn: server, err: syscall.ECONNRESET}, outbound.TCPConn{Original: orig, Protocol: "no-data"})
	r.waitMetric(1, "minimesh_tcp_connections_total", "direction", "outbound", "destination", orig.String(), "result", "reset")
	if l := r.lines(1); len(l) != 1 || l[0]["error"] != "reset" || l[0]["protocol"] != "no-data" {
		t.Errorf("log lines %v, want one, protocol no-data, error reset", l)
	}
	// ServeTCP has returned: a connection it dialled is in the queue.
	if queued(t, up.(*net.TCPListener)) {
		t.Error("the upstream was dialled for a connection the app reset before a byte")
	}
}

// queued reports whether a connection waits in ln's accept queue, with
// one non-blocking accept(2): no wait for one that will not come.
func queued(t *testing.T, ln *net.TCPListener) bool {
	t.Helper()
	rc, err := ln.SyscallConn()
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
	if aerr != nil && !errors.Is(aerr, syscall.EAGAIN) {
		t.Fatal(aerr)
	}
	return aerr == nil
}

// detected is a redirected connection whose detection met err
// (transparent.Conn's DetectErr): its first read returns it.
type detected struct {
	net.Conn
	err  error
	read bool
}

func (d *detected) DetectErr() error { return d.err }

func (d *detected) Read(p []byte) (int, error) {
	if !d.read {
		d.read = true
		return 0, d.err
	}
	return d.Conn.Read(p)
}

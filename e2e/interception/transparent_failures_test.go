package interception_test

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestTransparentUpstreamFailures: a redirected connection whose
// destination hangs (its SYNs dropped), refuses, or resets once connected
// is recorded as a failure, in the metric and the access log line, and the
// app's connection is reset within --connect-timeout (2 s here), not left
// hanging. A destination on another host's sidecar port (15001) is no
// port of this sidecar's and is relayed (docs/interception.md, "Opaque TCP").
func TestTransparentUpstreamFailures(t *testing.T) {
	bin := needTransparent(t)
	w := newWorld(t, bin, "")
	w.up.exec(t, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "7444", "-j", "DROP")
	rst := w.up.listen(t, ":7445")
	go func() {
		for {
			c, err := rst.Accept()
			if err != nil {
				return
			}
			_, _ = c.Read(make([]byte, 1))
			_ = c.(*net.TCPConn).SetLinger(0) // close with a reset
			c.Close()
		}
	}()
	w.tcpUpstream(":15001", "")

	for _, tc := range []struct {
		port, result string
		reply        string
		max          time.Duration
	}{
		{"7444", "connect-failure", "", 5 * time.Second}, // hangs: --connect-timeout
		{"7446", "connect-failure", "", time.Second},     // refused
		{"7445", "reset", "", time.Second},
		{"15001", "ok", "\x00hellobye", time.Second},
	} {
		start := time.Now()
		c := w.dial(upIP + ":" + tc.port)
		if _, err := c.Write([]byte("\x00hello")); err != nil { // unknown at once
			t.Fatal(err)
		}
		if tc.result == "ok" {
			// Half-closed only here: an app that half-closed before the
			// destination's reset counts ok (docs/interception.md).
			_ = c.(*net.TCPConn).CloseWrite()
		}
		_ = c.SetReadDeadline(start.Add(10 * time.Second))
		got, err := io.ReadAll(c)
		if d := time.Since(start); d > tc.max {
			t.Errorf("port %s: the app's connection ended after %v, want at most %v", tc.port, d, tc.max)
		}
		if string(got) != tc.reply || (tc.result == "ok") != (err == nil) {
			t.Errorf("port %s: read %q, %v; want %q and a reset unless ok", tc.port, got, err, tc.reply)
		}
		w.waitMetric(`minimesh_tcp_connections_total{destination="`+upIP+`:`+tc.port+`",direction="outbound",result="`+tc.result+`"}`, 1)
		want := map[string]any{"destination": upIP + ":" + tc.port, "protocol": "unknown"}
		if tc.result != "ok" {
			want["error"] = tc.result
		}
		w.accessLine(want)
	}
}

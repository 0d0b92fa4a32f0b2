package sidecar_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// synSent counts the IPv4 sockets connecting to 127.0.0.1:port whose SYN
// is unanswered (SYN_SENT in /proc/net/tcp).
func synSent(t *testing.T, port int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	remote := fmt.Sprintf("0100007F:%04X", port)
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 3 && f[2] == remote && f[3] == "02" {
			n++
		}
	}
	return n
}

// TestDrainCutsTunnelDialling: a CONNECT still dialling when the drain's
// time is up is recorded as cut by it (503, error shutdown), not as the
// 499 of an app that left, and the sidecar exits at the drain's end. Its
// dial ran on: the drain waited its 1 s grace for it in vain, and the
// listener's CloseAll then closed the app's connection under it, which
// was logged as the app's leaving and counted result="reset".
func TestDrainCutsTunnelDialling(t *testing.T) {
	hole, port := proxytest.FullAcceptQueue(t)
	const drain = 300 * time.Millisecond
	var alog syncBuffer
	r := start(t, sidecar.Config{Resolve: map[string]string{geo: hole},
		ConnectTimeout: 5 * time.Second, DrainTimeout: drain, AccessLog: &alog})
	before := synSent(t, port)
	c := dialRaw(t, r.sc.OutboundAddr())
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", geo, geo)
	if !proxytest.Poll(5*time.Second, time.Millisecond, func() bool { return synSent(t, port) > before }) {
		t.Fatal("the tunnel's dial did not begin")
	}
	began := time.Now()
	r.cancel()
	r.served(t, 10*time.Second)
	// The drain, then at most a little for the log lines: not the 1 s
	// grace for a relay (which its dial outlived) on top.
	if took := time.Since(began); took > drain+700*time.Millisecond {
		t.Errorf("Serve returned %v after the drain began, want about its %v", took, drain)
	}
	if l := alog.String(); !strings.Contains(l, `"method":"CONNECT"`) || !strings.Contains(l, `"status":503`) ||
		!strings.Contains(l, `"error":"shutdown"`) || strings.Contains(l, `"status":499`) {
		t.Errorf("the tunnel's access log line: %s, want 503 with error shutdown", l)
	}
	if !c.closed() {
		t.Error("the app's connection is still open after Serve returned")
	}
}

package interception_test

import (
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/wellknown"
)

// TestSidecarNotExemptRefusesItsOwnConnections: a sidecar run as a UID
// the init rules do not exempt (by hand, as root, a webhook that changed
// runAsUser) has its own upstream connections redirected back to its
// outbound listener. Each is refused at its first return, counted as a
// loop and logged at error level with the cause, and the app's
// connection is reset: one app connection made a hop per free place of
// the listener (1,023 at the default cap: reset 1023 under one
// destination), every file descriptor without a cap, and nothing said
// why. The sidecar stays live.
func TestSidecarNotExemptRefusesItsOwnConnections(t *testing.T) {
	bin := needTransparent(t)
	w := newWorldAs(t, bin, "", wellknown.ProxyUID+1)
	w.tcpUpstream(upIP+":8081", "")
	w.httpUpstream(upIP+":80", 200, false)

	start := time.Now()
	// Opaque TCP: the app's connection is reset, after one hop.
	c := w.dial(upIP + ":8081")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the app read %q, %v; want a reset", b, err)
	}
	const tcp = `minimesh_tcp_connections_total{destination="` + upIP + `:8081",direction="outbound",result=`
	w.waitMetric(tcp+`"loop"}`, 1)
	// The app's connection: reset, or connect-failure when the loop was
	// refused before the sidecar's dial had returned.
	if text := w.metrics(); seriesValue(text, tcp+`"reset"}`)+seriesValue(text, tcp+`"connect-failure"}`) != 1 {
		t.Errorf("the app's connection not counted once as reset or connect-failure:\n%s", grepLines(text, tcp))
	}

	// HTTP: the sidecar's request is refused at its return, not answered
	// 508 by a second hop.
	code, _, err := w.curl("-o", "/dev/null", "-w", "%{http_code}", "http://"+upIP+"/x")
	if err != nil || code != "502" {
		t.Errorf("GET through a sidecar whose own connections come back: %s %v, want 502", code, err)
	}
	const httpLoop = `minimesh_tcp_connections_total{destination="` + upIP + `:80",direction="outbound",result="loop"}`
	if n := w.metric(httpLoop); n < 1 {
		t.Errorf("%s = %v, want at least 1 (one per try)", httpLoop, n)
	}

	// One line per 10 s, not one per loop.
	if n, most := strings.Count(w.sidecar.Output(), "the sidecar's own connection came back to it"), 1+int(time.Since(start)/(10*time.Second)); n < 1 || n > most {
		t.Errorf("the cause is logged %d times, want 1 to %d (one line per 10 s):\n%s", n, most, tail(w.sidecar.Output(), 4000))
	}
	w.accessLineAny(map[string]any{"level": "ERROR", "original_dst": upIP + ":8081", "loops": 1})
	if code, _, err := w.curl("-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:15020/live"); err != nil || code != "200" {
		t.Errorf("/live: %s %v", code, err)
	}
}

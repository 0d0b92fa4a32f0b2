package inbound

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/wellknown"
)

// TestAppCrashWithRequestIsReset: an app that read a request on a kept
// connection and then went away (its listener closed, then the
// connection: a crash, a pod deleted with the request in flight) failed
// the request as a reset, in the answer, the metric and the log line:
// http.Transport's resend dialled the app, was refused, and the caller
// heard connect-failure, "the app does not accept connections", which
// says the app never got it.
func TestAppCrashWithRequestIsReset(t *testing.T) {
	for _, tc := range []struct{ name, method, extra string }{
		{"GET", "GET", ""},
		{"HEAD", "HEAD", ""},
		{"bodiless POST with Idempotency-Key", "POST", "Idempotency-Key: k\r\nContent-Length: 0\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var runs atomic.Int32
			app := &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
					if req.URL.Path == "/crash" {
						runs.Add(1)
						ln.Close()
						panic(http.ErrAbortHandler)
					}
					_, _ = io.WriteString(w, "ok")
				}),
				ErrorLog: log.New(io.Discard, "", 0),
			}
			go func() { _ = app.Serve(ln) }()
			t.Cleanup(func() { app.Close() })
			r := newRigAt(t, netip.MustParseAddrPort(ln.Addr().String()), Config{})
			if resp := r.exchange(t, "GET /warm HTTP/1.1\r\nHost: a\r\n\r\n"); resp.StatusCode != http.StatusOK {
				t.Fatalf("warm: %d", resp.StatusCode)
			}
			resp := r.exchange(t, tc.method+" /crash HTTP/1.1\r\nHost: a\r\n"+tc.extra+"\r\n")
			if got := resp.Header.Get(wellknown.HeaderError); resp.StatusCode != http.StatusBadGateway || got != wellknown.ErrorReset {
				t.Errorf("caller got %d %s %q, want 502 %q", resp.StatusCode, wellknown.HeaderError, got, wellknown.ErrorReset)
			}
			if n := runs.Load(); n != 1 {
				t.Errorf("the app ran /crash %d times, want 1", n)
			}
			// The log flushes every 200 ms.
			proxytest.Poll(5*time.Second, 10*time.Millisecond, func() bool { return strings.Contains(r.logOut.String(), "/crash") })
			var line map[string]any
			for _, l := range r.logLines(t) {
				if l["path"] == "/crash" {
					line = l
				}
			}
			if line == nil || line["error"] != wellknown.ErrorReset {
				t.Errorf("access log line of /crash: %v, want error %q", line, wellknown.ErrorReset)
			}
		})
	}
}

package outbound_test

import (
	"io"
	"log"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/minimesh/minimesh/wellknown"
)

// TestCrashedUpstreamResetNotConnectFailure: a GET written on a kept
// connection that the upstream read and then died on (its listener
// closed, then the connection) fails as a reset, on either transport:
// the resend on a new connection is refused, and that refusal was the
// try's verdict, a connect failure, which says the request was never
// sent (docs/policy.md) and which retryOn: [connect-failure] retried, a
// query of death sent on to the next endpoints.
func TestCrashedUpstreamResetNotConnectFailure(t *testing.T) {
	for _, tr := range []struct {
		name string
		opt  sidecarOpt
	}{
		{"std transport", withStdTransport()},
		{"fast transport", withFastTransport()},
	} {
		for _, pc := range []struct{ name, spec string }{
			{"no retries", "timeout: 5s"},
			{"retries on connect-failure", "retries: {attempts: 2, retryOn: [connect-failure], backoff: {base: 1ms, max: 1ms}}"},
		} {
			t.Run(tr.name+", "+pc.name, func(t *testing.T) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				var runs atomic.Int32
				srv := &http.Server{
					Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						if r.URL.Path == "/crash" {
							runs.Add(1)
							ln.Close() // the process going: no new connection is taken
							panic(http.ErrAbortHandler)
						}
						_, _ = io.WriteString(w, "ok")
					}),
					ErrorLog: log.New(io.Discard, "", 0),
				}
				go func() { _ = srv.Serve(ln) }()
				t.Cleanup(func() { srv.Close() })
				sc := startSidecar(t, policyDoc("geo", "geo-service", pc.spec), resolve(ln.Addr().String(), geo), tr.opt)
				c := sc.Client()
				resp, err := c.Get("http://" + geo + "/warm") // leaves a kept connection
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("warm: %d", resp.StatusCode)
				}
				resp, err = c.Get("http://" + geo + "/crash")
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if got := resp.Header.Get(wellknown.HeaderError); resp.StatusCode != http.StatusBadGateway || got != wellknown.ErrorReset {
					t.Errorf("status %d, %s %q (%s), want 502 %q", resp.StatusCode, wellknown.HeaderError, got, body, wellknown.ErrorReset)
				}
				if n := runs.Load(); n != 1 {
					t.Errorf("the upstream ran /crash %d times, want 1", n)
				}
				if n := sc.metric("minimesh_retries_total", "reason", "connect-failure"); n != 0 {
					t.Errorf("%v retries for connect-failure, want 0", n)
				}
			})
		}
	}
}

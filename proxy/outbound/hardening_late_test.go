package outbound_test

// Issue #11, item 2: an upstream that fails after its response headers
// (a timeout, a reset) is a failure: for the app (a 502/504 when nothing
// of the response has reached it yet, a body that ends in an error
// otherwise), for the metrics, for the breaker and for the access log.

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// lateApp is what the app sees of a response that failed after its
// headers.
type lateApp int

const (
	// lateAnswer: the sidecar's own error answer (status and kind of the
	// case), since nothing of the upstream's response had reached the app.
	lateAnswer lateApp = iota
	// lateCut: the upstream's 200 and its first bytes, then a body that
	// ends in an error, never a clean end. A Content-Length body's first
	// bytes, still in the server's buffer at the failure, reach the app
	// too: the access log's status and bytes are what it got.
	lateCut
)

const lateBody = "0123456789"

func TestLateFailures(t *testing.T) {
	const breakerPol = "circuitBreaker: {consecutiveFailures: 5, openTimeout: 30s}"
	const failOn5xx = "circuitBreaker: {consecutiveFailures: 5, openTimeout: 30s, failOn: [\"5xx\"]}"

	goUpstream := func(chunked bool, bodyBytes string) func(t *testing.T) string {
		return func(t *testing.T) string {
			u := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
				if !chunked {
					w.Header().Set("Content-Length", "100")
				}
				w.WriteHeader(http.StatusOK)
				_, _ = io.WriteString(w, bodyBytes)
				w.(http.Flusher).Flush()
				hang(r)
			})
			return u.Host()
		}
	}
	rawReset := func(bodyBytes string) func(t *testing.T) string {
		return func(t *testing.T) string {
			addr, _ := newRawUpstream(t, func(c net.Conn, req *http.Request) {
				_, _ = io.Copy(io.Discard, req.Body)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\n"+bodyBytes)
				resetConn(c)
			})
			return addr
		}
	}
	cases := []struct {
		name     string
		policy   string
		upstream func(t *testing.T) string
		app      lateApp
		appCode  int    // lateAnswer: the sidecar's status
		kind     string // the failure's kind: X-Minimesh-Error, access log error
		metric   string // minimesh_requests_total's code
		failures uint32 // breaker's totalFailures
		logCode  int    // the access log's status
	}{
		{"a headers then hang", "timeout: 300ms\n" + breakerPol, goUpstream(false, ""),
			lateAnswer, http.StatusGatewayTimeout, "timeout", "504", 1, http.StatusGatewayTimeout},
		{"b body bytes then hang", "timeout: 300ms\n" + breakerPol, goUpstream(true, lateBody),
			lateCut, 0, "timeout", "504", 1, http.StatusOK},
		{"b' body bytes then hang, content-length", "timeout: 300ms\n" + breakerPol, goUpstream(false, lateBody),
			lateCut, 0, "timeout", "504", 1, http.StatusOK},
		{"c body bytes then reset", breakerPol, rawReset(lateBody),
			lateCut, 0, "reset", "502", 1, http.StatusOK},
		{"d headers then reset", breakerPol, rawReset(""),
			lateAnswer, http.StatusBadGateway, "reset", "502", 1, http.StatusBadGateway},
		{"e body bytes then reset, failOn 5xx", failOn5xx, rawReset(lateBody),
			lateCut, 0, "reset", "502", 0, http.StatusOK},
		{"e' headers then reset, failOn 5xx", failOn5xx, rawReset(""),
			lateAnswer, http.StatusBadGateway, "reset", "502", 0, http.StatusBadGateway},
	}
	paths := []struct {
		name   string
		method string
		opts   []sidecarOpt
	}{
		{"fast GET", http.MethodGet, nil},
		{"transport GET", http.MethodGet, []sidecarOpt{withStdTransport()}},
		{"transport POST", http.MethodPost, nil},
	}
	for _, tc := range cases {
		for _, p := range paths {
			t.Run(tc.name+"/"+p.name, func(t *testing.T) {
				var alog accessLog
				sc := startSidecar(t, policyDoc("geo", "geo-service", tc.policy), resolve(tc.upstream(t), geo),
					append([]sidecarOpt{withAccessLog(&alog)}, p.opts...)...)
				var body io.Reader
				if p.method == http.MethodPost {
					body = strings.NewReader("hello")
				}
				req, err := http.NewRequest(p.method, "http://"+geo+"/late", body)
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				resp, err := sc.Client().Do(req)
				var got []byte
				var readErr error
				if err == nil {
					got, readErr = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				switch tc.app {
				case lateAnswer:
					if err != nil {
						t.Fatalf("no answer: %v; want the sidecar's %d %s", err, tc.appCode, tc.kind)
					}
					if readErr != nil {
						t.Fatalf("the sidecar's answer %d was cut: %v", resp.StatusCode, readErr)
					}
					if resp.StatusCode != tc.appCode {
						// Go on: the metric, breaker and log checks below
						// tell whether only the status is wrong.
						t.Errorf("status %d (X-Minimesh-Error %q, body %q), want the sidecar's %d", resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), got, tc.appCode)
					} else {
						expectSidecarError(t, resp, got, tc.appCode, tc.kind, geo)
					}
					if cl := resp.Header.Get("Content-Length"); cl == "100" {
						t.Errorf("the sidecar's answer kept the upstream's Content-Length 100")
					}
				case lateCut:
					if err != nil {
						t.Fatalf("no response: %v; want the upstream's 200 and then a cut body", err)
					}
					if resp.StatusCode != http.StatusOK || readErr == nil || string(got) != lateBody {
						t.Fatalf("%d, body %q, read error %v: want 200, %q, then an error", resp.StatusCode, got, readErr, lateBody)
					}
					if !errors.Is(readErr, io.ErrUnexpectedEOF) {
						t.Logf("body read error: %v", readErr)
					}
				}
				if tc.kind == "timeout" {
					if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
						t.Errorf("the failure reached the app after %v, want about the 300ms timeout", d)
					}
				}

				m := sc.metrics()
				if got := m.value("minimesh_requests_total", "destination", geo); got != 1 {
					t.Errorf("requests_total{%s} = %v, want 1", geo, got)
				}
				if got := m.value("minimesh_requests_total", "destination", geo, "code", tc.metric); got != 1 {
					t.Errorf("requests_total{%s, code=%s} = %v, want 1", geo, tc.metric, got)
				}
				st := sc.breaker(geo)
				if st.Counts.Requests != 1 || st.Counts.TotalFailures != tc.failures || st.Counts.TotalSuccesses != 1-tc.failures {
					t.Errorf("breaker counts %+v, want 1 request with %d failures", st.Counts, tc.failures)
				}
				es := alog.wait(t, 1, 2*time.Second)
				if e := es[0]; e.Status != tc.logCode || e.Error != tc.kind || e.Destination != geo || e.Method != p.method || e.Path != "/late" {
					t.Errorf("access log %+v, want %s /late to %s with status %d and error %q", e, p.method, geo, tc.logCode, tc.kind)
				}
				if e := es[0]; tc.app == lateCut && e.BytesOut != int64(len(got)) {
					t.Errorf("access log bytes_out %d, but the app got %d bytes", e.BytesOut, len(got))
				}
			})
		}
	}
}

// TestStatusUnder100IsAFailure: http.ReadResponse reads any three digits
// as a status; one under 100 is no HTTP answer. It is the upstream's
// failure, answered 502 reset and counted by the breaker (which opens at
// the first here, so the second request never leaves the sidecar): not
// passed to the app's WriteHeader, which panicked with the try unreported
// and left a half-open breaker waiting for its probe for good.
func TestStatusUnder100IsAFailure(t *testing.T) {
	for _, p := range []struct {
		name string
		opts []sidecarOpt
	}{{"fast", nil}, {"std-transport", []sidecarOpt{withStdTransport()}}} {
		for _, answer := range []string{
			"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
			"HTTP/1.1 000 Zero\r\nContent-Length: 3\r\n\r\nabc",
		} {
			t.Run(p.name+"/"+answer[9:12], func(t *testing.T) {
				addr, hits := newRawUpstream(t, func(c net.Conn, _ *http.Request) { io.WriteString(c, answer) })
				sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 1, openTimeout: 30s}"),
					resolve(addr, geo), p.opts...)
				resp, body := get(t, sc.Client(), "http://"+geo+"/")
				expectSidecarError(t, resp, body, http.StatusBadGateway, "reset", geo)
				resp, body = get(t, sc.Client(), "http://"+geo+"/")
				expectSidecarError(t, resp, body, http.StatusServiceUnavailable, "circuit-open", geo)
				if got := hits.Load(); got != 1 {
					t.Errorf("upstream read %d requests, want 1 (the breaker opened at the first)", got)
				}
			})
		}
	}
}

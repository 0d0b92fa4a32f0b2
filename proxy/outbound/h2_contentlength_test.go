package outbound_test

// An HTTP/2 upstream's answer whose Content-Length came more than once
// or as a list, which Go's HTTP/2 transport leaves unread (its
// ContentLength is -1, its body unchecked): fields that disagree make
// the answer malformed (RFC 9110 §8.6, RFC 9113 §8.1.1), the sidecar's
// 502 reset, as an HTTP/1 upstream's is in Go's HTTP/1 transport; fields
// that agree count as one, and the body is held to it as a single
// field's is. Each answer is a raw HTTP/2 upstream's (scriptedH2Upstream),
// read by a Go h2c app.

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/minimesh/minimesh/proxy/internal/otlptest"
	"github.com/minimesh/minimesh/proxy/sidecar"
	"github.com/minimesh/minimesh/wellknown"
)

// TestH2ContentLengthDisagree: fields that disagree, a list that does,
// a value that is no length: whatever the method, status and DATA, the
// app gets the sidecar's 502 reset, and the access log, the metric, the
// span and the breaker a failure. Before, the app got the upstream's
// status and whatever DATA came, all recorded as a success.
func TestH2ContentLengthDisagree(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		answer h2Answer
	}{
		{"two fields", http.MethodGet, func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "200", "content-length", "2", "content-length", "3")
			data(true, []byte("abc"))
		}},
		{"a list", http.MethodGet, func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "200", "content-length", "3, 2")
			data(true, []byte("abc"))
		}},
		{"no length", http.MethodGet, func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "200", "content-length", "+2")
			data(true, []byte("ab"))
		}},
		{"two fields, no DATA", http.MethodGet, func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "200", "content-length", "0", "content-length", "1")
		}},
		{"HEAD", http.MethodHead, func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "200", "content-length", "5", "content-length", "6")
		}},
		{"204", http.MethodGet, func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "204", "content-length", "1", "content-length", "2")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := scriptedH2Upstream(t, tc.answer)
			var alog accessLog
			col := otlptest.Start(t)
			sc := startSidecar(t, policyDoc("health", healthSvc, ""), resolve(up, healthSvc), withAccessLog(&alog),
				func(cfg *sidecar.Config) { cfg.OTLPEndpoint, cfg.TraceSampleRatio = col.Addr, 1 })
			resp, err := h2Get(t, sc, tc.method, healthSvc)
			if err != nil {
				t.Fatalf("the app got no answer: %v", err)
			}
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorReset || rerr != nil {
				t.Fatalf("the app read %d %s %q, %v; want the sidecar's 502 reset", resp.StatusCode, resp.Header.Get(wellknown.HeaderError), body, rerr)
			}
			if tc.method != http.MethodHead {
				var eb struct{ Error, Message string }
				if err := json.Unmarshal(body, &eb); err != nil || !strings.Contains(eb.Message, "malformed response") || !strings.Contains(eb.Message, "Content-Length") {
					t.Errorf("answer %q, want a message that names the malformed Content-Length", body)
				}
			}
			e := alog.wait(t, 1, 5*time.Second)[0]
			if e.Status != http.StatusBadGateway || e.Error != wellknown.ErrorReset {
				t.Errorf("access log status %d error %q, want 502 reset", e.Status, e.Error)
			}
			if got := sc.metric("minimesh_requests_total", "destination", healthSvc, "code", "502"); got != 1 {
				t.Errorf("minimesh_requests_total{code=\"502\"} = %v, want 1", got)
			}
			if c := breakerSettled(t, sc, healthSvc); c.TotalFailures != 1 || c.TotalSuccesses != 0 {
				t.Errorf("breaker counts %+v, want one failure", c)
			}
			s := col.Trace(t, e.TraceID, 1)[0]
			if a := spanAttrs(s); s.Status.GetCode() != tracepb.Status_STATUS_CODE_ERROR || a["error.type"] != wellknown.ErrorReset || a["http.response.status_code"] != "502" {
				t.Errorf("span status %v, attributes %v; want an error, reset, 502", s.Status.GetCode(), a)
			}
		})
	}
}

// TestH2ContentLengthDisagreeRetried: the malformed answer is a try's
// reset, which retryOn names, as an HTTP/1 upstream's is: it goes again.
func TestH2ContentLengthDisagreeRetried(t *testing.T) {
	up := scriptedH2Upstream(t, func(headers func(bool, ...string), data func(bool, []byte)) {
		headers(false, ":status", "200", "content-length", "2", "content-length", "3")
		data(true, []byte("abc"))
	})
	var alog accessLog
	sc := startSidecar(t, policyDoc("health", healthSvc, "retries: {attempts: 1, retryOn: [reset], backoff: {base: 1ms, max: 2ms}}"),
		resolve(up, healthSvc), withAccessLog(&alog))
	resp, err := h2Get(t, sc, http.MethodGet, healthSvc)
	if err != nil {
		t.Fatalf("the app got no answer: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if e := alog.wait(t, 1, 5*time.Second)[0]; resp.StatusCode != http.StatusBadGateway || e.Attempts != 2 || e.Error != wellknown.ErrorReset {
		t.Errorf("answer %d after %d tries (error %q), want 502 reset after 2", resp.StatusCode, e.Attempts, e.Error)
	}
}

// TestH2ContentLengthAgree: fields that agree, as several or as a list,
// are one: the app gets the answer with one Content-Length, a success
// when the body is that long, and the sidecar's 502 reset, a failure,
// when it is longer or missing before any of it reached the app, as for
// a single field (a body cut after the app got the status:
// TestH2HeldLengthCut). Before, the app got the
// status and whatever DATA came, a success.
func TestH2ContentLengthAgree(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		answer h2Answer
		code   int    // what the app reads
		body   string // of a 200
		length string // the app's Content-Length field
	}{
		{"two fields", http.MethodGet, func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "200", "content-length", "2", "content-length", "2")
			data(true, []byte("ab"))
		}, http.StatusOK, "ab", "2"},
		{"a list", http.MethodGet, func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "200", "content-length", "2 , 2")
			data(true, []byte("ab"))
		}, http.StatusOK, "ab", "2"},
		{"zero, no DATA", http.MethodGet, func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "200", "content-length", "0", "content-length", "0")
		}, http.StatusOK, "", "0"},
		{"HEAD", http.MethodHead, func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "200", "content-length", "5", "content-length", "5")
		}, http.StatusOK, "", "5"},
		{"past the length", http.MethodGet, func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "200", "content-length", "2", "content-length", "2")
			data(true, []byte("abcdef"))
		}, http.StatusBadGateway, "", ""},
		{"no DATA", http.MethodGet, func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "200", "content-length", "2", "content-length", "2")
		}, http.StatusBadGateway, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := scriptedH2Upstream(t, tc.answer)
			var alog accessLog
			sc := startSidecar(t, policyDoc("health", healthSvc, ""), resolve(up, healthSvc), withAccessLog(&alog))
			resp, err := h2Get(t, sc, tc.method, healthSvc)
			if err != nil {
				t.Fatalf("the app got no answer: %v", err)
			}
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code || rerr != nil {
				t.Fatalf("the app read %d %q, %v; want %d", resp.StatusCode, body, rerr, tc.code)
			}
			e := alog.wait(t, 1, 5*time.Second)[0]
			c := breakerSettled(t, sc, healthSvc)
			if tc.code != http.StatusOK {
				if resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorReset || e.Status != http.StatusBadGateway || e.Error != wellknown.ErrorReset ||
					c.TotalFailures != 1 || c.TotalSuccesses != 0 {
					t.Errorf("answer %s, access log %d %q, breaker %+v; want the sidecar's 502 reset and one failure",
						resp.Header.Get(wellknown.HeaderError), e.Status, e.Error, c)
				}
				if got := sc.metric("minimesh_requests_total", "destination", healthSvc, "code", "502"); got != 1 {
					t.Errorf("minimesh_requests_total{code=\"502\"} = %v, want 1", got)
				}
				return
			}
			if string(body) != tc.body || len(resp.Header.Values("Content-Length")) != 1 || resp.Header.Get("Content-Length") != tc.length {
				t.Errorf("the app read %q with Content-Length %q, want %q with one field, %s", body, resp.Header.Values("Content-Length"), tc.body, tc.length)
			}
			if e.Status != http.StatusOK || e.Error != "" || c.TotalSuccesses != 1 || c.TotalFailures != 0 {
				t.Errorf("access log %d %q, breaker %+v; want 200 and one success", e.Status, e.Error, c)
			}
			if got := sc.metric("minimesh_requests_total", "destination", healthSvc, "code", "200"); got != 1 {
				t.Errorf("minimesh_requests_total{code=\"200\"} = %v, want 1", got)
			}
		})
	}
}

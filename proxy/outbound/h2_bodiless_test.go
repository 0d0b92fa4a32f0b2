package outbound_test

// An HTTP/2 upstream's answers that may carry no body (RFC 9110 §6.4.1)
// but come with one, or with a Content-Length the app's HTTP/2 client
// reads as a body to come, and a body the app's server refuses part of:
// what the app reads and what the sidecar records must agree. Each
// answer is a raw HTTP/2 upstream's (scriptedH2Upstream), read by a Go
// h2c app.

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// h2Get sends method /x to svc through the sidecar as an h2c app.
func h2Get(t *testing.T, sc *testSidecar, method, svc string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+sc.Addr+"/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = svc
	return h2cClient(t).Transport.RoundTrip(req)
}

// breakerSettled waits for the try's outcome to reach the breaker.
func breakerSettled(t *testing.T, sc *testSidecar, svc string) breakerCounts {
	t.Helper()
	var b breakerStatus
	if !proxytest.Poll(5*time.Second, 5*time.Millisecond, func() bool {
		b = sc.breaker(svc)
		return b.Counts.TotalSuccesses+b.Counts.TotalFailures > 0
	}) {
		t.Fatalf("the breaker heard of no try: %+v", b.Counts)
	}
	return b.Counts
}

// TestH2BodilessAnswer: a 204 or 304 whose upstream sent DATA after it
// reaches the app as itself with no body, as Go's HTTP/1 transport and
// Envoy pass it, and is the success it was everywhere. Before, the app's
// server refused the body, the ReverseProxy aborted, and the app read a
// stream reset (INTERNAL_ERROR) where the access log, the metric and the
// breaker recorded the status's success. A 304 with a content-length and
// no DATA was the sidecar's 502 reset (Go's HTTP/2 transport reads it as
// a body cut short), and a 204's or 304's content-length, passed on, is
// the same cut body to a Go h2 app.
func TestH2BodilessAnswer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		answer h2Answer
		code   int
	}{
		{"204 with DATA", http.MethodGet, func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "204")
			data(true, []byte("xx"))
		}, http.StatusNoContent},
		{"304 with DATA", http.MethodGet, func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "304", "etag", `"v1"`)
			data(true, []byte("xx"))
		}, http.StatusNotModified},
		{"204 with content-length and DATA", http.MethodGet, func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "204", "content-length", "2")
			data(true, []byte("xx"))
		}, http.StatusNoContent},
		{"304 with content-length, no DATA", http.MethodGet, func(headers func(bool, ...string), _ func(bool, []byte)) {
			headers(true, ":status", "304", "etag", `"v1"`, "content-length", "5")
		}, http.StatusNotModified},
		{"HEAD answered with DATA", http.MethodHead, func(headers func(bool, ...string), data func(bool, []byte)) {
			headers(false, ":status", "200", "content-length", "5")
			data(true, []byte("hello"))
		}, http.StatusOK},
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
			if resp.StatusCode != tc.code || len(body) != 0 || rerr != nil {
				t.Errorf("the app read %d, body %q, error %v; want %d, no body, no error", resp.StatusCode, body, rerr, tc.code)
			}
			if tc.method != http.MethodHead && resp.Header.Get("Content-Length") != "" {
				t.Errorf("a %d passed on with Content-Length %s", tc.code, resp.Header.Get("Content-Length"))
			}
			e := alog.wait(t, 1, 5*time.Second)[0]
			if e.Status != tc.code || e.Error != "" {
				t.Errorf("access log status %d error %q, want %d and none", e.Status, e.Error, tc.code)
			}
			if got := sc.metric("minimesh_requests_total", "destination", healthSvc, "code", strconv.Itoa(tc.code)); got != 1 {
				t.Errorf("minimesh_requests_total{code=%q} = %v, want 1", strconv.Itoa(tc.code), got)
			}
			if c := breakerSettled(t, sc, healthSvc); c.TotalSuccesses != 1 || c.TotalFailures != 0 {
				t.Errorf("breaker counts %+v, want one success", c)
			}
		})
	}
}

// TestH2RefusedWriteIsFailure: a body the app's server refuses part of
// (here past the Content-Length the upstream's headers said, which Go's
// HTTP/2 transport does not hold it to when the field comes twice) cuts
// the app's response: the upstream's failure after its headers, as a
// reset is (docs/operations.md, "A response that fails after its
// headers"). Before, the refusal read as the app gone: 499, and a
// success for the breaker.
func TestH2RefusedWriteIsFailure(t *testing.T) {
	more := make(chan struct{})
	up := scriptedH2Upstream(t, func(headers func(bool, ...string), data func(bool, []byte)) {
		headers(false, ":status", "200", "content-length", "2", "content-length", "2")
		data(false, []byte("ab"))
		<-more // the app has read "ab": the rest is a write of its own
		data(true, []byte("cdef"))
	})
	var alog accessLog
	sc := startSidecar(t, policyDoc("health", healthSvc, ""), resolve(up, healthSvc), withAccessLog(&alog))
	resp, err := h2Get(t, sc, http.MethodGet, healthSvc)
	if err != nil {
		close(more)
		t.Fatalf("the app got no answer: %v", err)
	}
	got := make([]byte, 2)
	_, rerr := io.ReadFull(resp.Body, got)
	close(more)
	if rerr != nil || string(got) != "ab" {
		t.Fatalf("the app read %q, %v; want the first DATA", got, rerr)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	e := alog.wait(t, 1, 5*time.Second)[0]
	if e.Status != http.StatusOK || e.Error != "reset" {
		t.Errorf("access log status %d error %q, want the 200 the app got with error reset", e.Status, e.Error)
	}
	if got := sc.metric("minimesh_requests_total", "destination", healthSvc, "code", "502"); got != 1 {
		t.Errorf("minimesh_requests_total{code=\"502\"} = %v, want 1 (its series: 499 %v, 200 %v)", got,
			sc.metric("minimesh_requests_total", "destination", healthSvc, "code", "499"),
			sc.metric("minimesh_requests_total", "destination", healthSvc, "code", "200"))
	}
	if c := breakerSettled(t, sc, healthSvc); c.TotalFailures != 1 || c.TotalSuccesses != 0 {
		t.Errorf("breaker counts %+v, want one failure", c)
	}
}

// TestLateAnswerSaysWhat: the sidecar's answer to a response that failed
// after its headers, before any of its body reached the app, says so,
// with the cause; before, its message said the connection "failed before
// a response: the response failed after its headers".
func TestLateAnswerSaysWhat(t *testing.T) {
	up := scriptedH2Upstream(t, func(headers func(bool, ...string), data func(bool, []byte)) {
		headers(false, ":status", "200", "content-length", "2")
		data(true, []byte("abcdef"))
	})
	sc := startSidecar(t, policyDoc("health", healthSvc, ""), resolve(up, healthSvc))
	resp, err := h2Get(t, sc, http.MethodGet, healthSvc)
	if err != nil {
		t.Fatalf("the app got no answer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var eb struct {
		Error, Message string
	}
	if err := json.Unmarshal(b, &eb); err != nil || resp.StatusCode != http.StatusBadGateway || eb.Error != "reset" {
		t.Fatalf("answer %d %q, want the sidecar's 502 reset", resp.StatusCode, b)
	}
	if want := "upstream " + healthSvc + "'s response failed after its headers, before any of its body reached the app: "; !strings.HasPrefix(eb.Message, want) || strings.Contains(eb.Message, "before a response") {
		t.Errorf("message %q, want it to begin %q, with the cause", eb.Message, want)
	}
	if !strings.Contains(eb.Message, "Content-Length") {
		t.Errorf("message %q does not name the cause (the body past its Content-Length)", eb.Message)
	}
}

package outbound_test

// An HTTP/2 upstream's answers that may carry no body (RFC 9110 §6.4.1)
// but come with one, or with a Content-Length the app's HTTP/2 client
// reads as a body to come, and a body cut after its status for being
// longer or shorter than its Content-Length said: what the app reads and
// what the sidecar records must agree. Each answer is a raw HTTP/2
// upstream's (scriptedH2Upstream), read by a Go h2c app.

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/leanhttp"
	"github.com/minimesh/minimesh/proxy/outbound"
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

// TestH2HeldLengthCut: a body longer or shorter than the Content-Length
// its upstream's headers said twice (Go's HTTP/2 transport holds a
// response to the field only when it comes once) cuts the app's response
// once part of it went out: the upstream's failure after its headers, as
// a reset is (docs/operations.md, "A response that fails after its
// headers"). Before, the excess was refused by the app's server, which
// read as the app gone (499, a success for the breaker), then as a reset
// (refusedWrite); the shortfall went unseen, a success.
func TestH2HeldLengthCut(t *testing.T) {
	// More than net/http's HTTP/2 server buffers (4 KiB): its write
	// sends the status and the bytes at once, as a declared length is not
	// flushed (the ReverseProxy flushes only a body of unknown length).
	first := strings.Repeat("a", 5000)
	for _, tc := range []struct {
		name   string
		length string
		rest   []byte // after the app has the status
	}{
		{"past the length", "5000", []byte("cdef")},
		{"short of the length", "6000", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			more := make(chan struct{})
			up := scriptedH2Upstream(t, func(headers func(bool, ...string), data func(bool, []byte)) {
				headers(false, ":status", "200", "content-length", tc.length, "content-length", tc.length)
				data(false, []byte(first))
				<-more // the app has the status: the rest comes after
				data(true, tc.rest)
			})
			var alog accessLog
			sc := startSidecar(t, policyDoc("health", healthSvc, ""), resolve(up, healthSvc), withAccessLog(&alog))
			resp, err := h2Get(t, sc, http.MethodGet, healthSvc)
			close(more)
			if err != nil {
				t.Fatalf("the app got no answer: %v", err)
			}
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || rerr == nil || !strings.HasPrefix(first, string(body)) || resp.Header.Get("Content-Length") != tc.length {
				t.Errorf("the app read %d, %d bytes of Content-Length %q, %v; want the 200 and part of its body, then the cut",
					resp.StatusCode, len(body), resp.Header.Get("Content-Length"), rerr)
			}
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
		})
	}
}

// TestRefusedWriteRealServers: the writes the app's server refuses for
// what the response's head said (a body past its Content-Length, a body
// on a 204) are not the app gone (ReaderGone), on each server the
// sidecar may serve the app with: net/http's HTTP/2 server says so only
// in text (h2WroteMore), which a Go upgrade may change. No upstream's
// answer reaches such a write now that an HTTP/2 upstream's is held to
// its Content-Length (TestH2HeldLengthCut) and a 204's, 304's or HEAD's
// body is dropped (TestH2BodilessAnswer): the check stays, as a guard.
func TestRefusedWriteRealServers(t *testing.T) {
	for _, srv := range []string{"net/http", "net/http h2c", "leanhttp"} {
		for _, tc := range []struct {
			name  string
			write func(w http.ResponseWriter) error
		}{
			{"past Content-Length", func(w http.ResponseWriter) error {
				w.Header().Set("Content-Length", "2")
				if _, err := w.Write([]byte("ab")); err != nil {
					return err
				}
				// The ReverseProxy's flush, which sends the head: only then
				// does net/http's HTTP/2 server hold the body to its length.
				if err := http.NewResponseController(w).Flush(); err != nil {
					return err
				}
				_, err := w.Write([]byte("cdef"))
				return err
			}},
			{"body on a 204", func(w http.ResponseWriter) error {
				w.WriteHeader(http.StatusNoContent)
				_, err := w.Write([]byte("x"))
				return err
			}},
		} {
			t.Run(srv+"/"+tc.name, func(t *testing.T) {
				errs := make(chan error, 1)
				h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					select {
					case errs <- tc.write(w):
					default: // a client's retry: the first write tells
					}
				})
				addr, c := refusingServer(t, srv, h)
				resp, err := c.Get("http://" + addr + "/")
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if werr := <-errs; werr == nil || outbound.ReaderGone(werr) {
					t.Errorf("the write's error %v: want a refusal, which ReaderGone tells from the reader gone", werr)
				}
			})
		}
	}
}

// refusingServer serves h on a server of the kind the sidecar may serve
// its app with, and returns its address and a client for it.
func refusingServer(t *testing.T, kind string, h http.Handler) (string, *http.Client) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	std := &http.Server{Handler: h}
	c := &http.Client{Transport: &http.Transport{}}
	switch kind {
	case "net/http h2c":
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		std.Protocols = &p
		c = h2cClient(t)
		fallthrough
	case "net/http":
		go func() { _ = std.Serve(ln) }()
		t.Cleanup(func() { std.Close() })
	case "leanhttp":
		s := leanhttp.New(std)
		go func() { _ = s.Serve(ln) }()
		go func() { _ = s.ServeStd() }()
		t.Cleanup(func() { s.Close() })
	}
	t.Cleanup(c.CloseIdleConnections)
	return ln.Addr().String(), c
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

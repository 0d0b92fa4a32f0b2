package outbound_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// uploadPerTry is the per-try timeout of these tests' policies. Their
// uploads pause for longer than it (uploadPause), and their whole
// timeout, when they have one, is far longer.
const (
	uploadPerTry = 300 * time.Millisecond
	uploadPause  = 4 * uploadPerTry
)

// pertryUploads are the ways an app's body reaches a try: streamed from
// the app (no retries, or the part of a large one after the first
// MaxReplayBody bytes), or held whole before the first try (small, with
// retries: on the fast path and on http.Transport's).
var pertryUploads = []struct {
	name          string
	length, first int // the body's bytes, and those sent before the pause
	attempts      int
	tries         int // against an upstream that never answers
	// streamed: the pause comes while a try streams the body; else
	// while the sidecar reads it before the first try (the first
	// MaxReplayBody bytes, or a small body whole).
	streamed bool
}{
	{name: "streamed", length: 100000, first: 5000, attempts: 0, tries: 1, streamed: true},
	{name: "small streamed", length: 1000, first: 10, attempts: 0, tries: 1, streamed: true},
	{name: "large with retries, paused after the held part", length: 100000, first: 80000, attempts: 2, tries: 1, streamed: true},
	{name: "large with retries, paused in the held part", length: 100000, first: 5000, attempts: 2, tries: 1},
	{name: "small with retries, held whole", length: 1000, first: 10, attempts: 2, tries: 3},
}

func pertryPolicy(attempts int, timeout string) string {
	spec := "retries: {attempts: " + strconv.Itoa(attempts) + ", perTryTimeout: " + uploadPerTry.String() +
		", retryOn: [timeout], backoff: {base: 1ms, max: 2ms}}\ncircuitBreaker: {consecutiveFailures: 10, openTimeout: 30s}"
	if timeout != "" {
		spec = "timeout: " + timeout + "\n" + spec
	}
	return policyDoc("geo", "geo-service", spec)
}

// sendPaused writes a request announcing length body bytes, the first
// of them, then, after pause, the rest; it returns the answer and the
// time from the write of the body's last bytes to it.
func sendPaused(t *testing.T, sc *testSidecar, length, first int, pause time.Duration) (*http.Response, []byte, time.Duration) {
	t.Helper()
	c := dialSidecar(t, sc)
	_ = c.SetDeadline(time.Now().Add(pause + 10*time.Second))
	// PUT: idempotent, so that a held body goes again after a timeout.
	head := "PUT http://" + geo + "/upload HTTP/1.1\r\nHost: " + geo + "\r\nContent-Length: " + strconv.Itoa(length) + "\r\n\r\n"
	if _, err := io.WriteString(c, head+strings.Repeat("x", first)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(pause)  // the app's own pause: what the test is about is the sidecar's answer after it
	last := time.Now() // before the write: the sidecar may read the bytes before it returns
	if _, err := io.WriteString(c, strings.Repeat("y", length-first)); err != nil {
		t.Fatalf("the rest of the body after the pause: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer %v after the body's last byte: %v", time.Since(last), err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	return resp, body, time.Since(last)
}

// TestPerTryTimeoutPausedUpload: the per-try timeout counts from the
// app's last body byte, as Envoy's per_try_timeout starts at the
// downstream request's end: an app whose upload pauses for longer than
// perTryTimeout gets the upstream's answer, where the try was cut at
// perTryTimeout from its start (a 504, and the upstream's connection
// closed under the upload), the app's slowness blamed on the upstream.
func TestPerTryTimeoutPausedUpload(t *testing.T) {
	for _, tc := range pertryUploads {
		t.Run(tc.name, func(t *testing.T) {
			u := readBodyUpstream(t, nil)
			al := &accessLog{}
			sc := startSidecar(t, pertryPolicy(tc.attempts, "20s"), resolve(u.Host(), geo),
				withRequestBodyTimeout(20*time.Second), withAccessLog(al))
			resp, body, _ := sendPaused(t, sc, tc.length, tc.first, uploadPause)
			want := "got " + strings.Repeat("x", tc.first) + strings.Repeat("y", tc.length-tc.first)
			if resp.StatusCode != http.StatusOK || string(body) != want {
				t.Fatalf("status %d (X-Minimesh-Error %q), %d bytes: want the upstream's 200 with the %d bytes sent",
					resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), len(body), tc.length)
			}
			if e := al.wait(t, 1, 2*time.Second)[0]; e.Status != http.StatusOK || e.Error != "" || e.Attempts != 1 {
				t.Errorf("access log status %d error %q attempts %d, want one try, 200", e.Status, e.Error, e.Attempts)
			}
			if b := sc.breaker(geo); b.Counts.TotalFailures != 0 {
				t.Errorf("breaker counted %d failures, want none", b.Counts.TotalFailures)
			}
		})
	}
}

// TestPerTryTimeoutAfterUpload: once the app's body is all sent, the
// per-try timeout runs: an upstream that reads it and never answers is
// abandoned perTryTimeout after the last byte, retried where the body
// is held (the whole timeout, 20 s, far away), and the 504 is the
// upstream's timeout in the access log, the metrics and the breaker.
func TestPerTryTimeoutAfterUpload(t *testing.T) {
	for _, tc := range pertryUploads {
		t.Run(tc.name, func(t *testing.T) {
			addr, hits := newRawUpstream(t, func(c net.Conn, _ *http.Request) { _, _ = io.Copy(io.Discard, c) })
			al := &accessLog{}
			sc := startSidecar(t, pertryPolicy(tc.attempts, "20s"), resolve(addr, geo),
				withRequestBodyTimeout(20*time.Second), withAccessLog(al))
			resp, body, after := sendPaused(t, sc, tc.length, tc.first, uploadPause)
			expectSidecarError(t, resp, body, http.StatusGatewayTimeout, "timeout", geo)
			t.Logf("504 %v after the last byte", after)
			if least := time.Duration(tc.tries) * uploadPerTry; after < least || after > least+5*time.Second {
				t.Errorf("504 %v after the body's last byte, want it %d × the %v per-try timeout after it", after, tc.tries, uploadPerTry)
			}
			if got := hits.Load(); got != int64(tc.tries) {
				t.Errorf("upstream saw %d tries, want %d", got, tc.tries)
			}
			if e := al.wait(t, 1, 2*time.Second)[0]; e.Status != http.StatusGatewayTimeout || e.Error != "timeout" || e.Attempts != tc.tries {
				t.Errorf("access log status %d error %q attempts %d, want 504 timeout after %d tries", e.Status, e.Error, e.Attempts, tc.tries)
			}
			if got := sc.metric("minimesh_requests_total", "destination", geo, "code", "504"); got != 1 {
				t.Errorf("requests_total{504} = %v, want 1", got)
			}
			if b := sc.breaker(geo); b.Counts.TotalFailures != uint32(tc.tries) {
				t.Errorf("breaker counted %d failures, want the %d tries' timeouts", b.Counts.TotalFailures, tc.tries)
			}
		})
	}
}

// TestPerTryTimeoutStalledUpload: while the app's body is stalled, the
// per-try timeout does not run (it counts from the body's end): the
// whole timeout answers, or without one --request-body-timeout, and
// the try's upstream connection lives until then. It was closed at
// perTryTimeout, while the app waited for its answer until the same
// limits: http.Transport answers a cancelled try only once its body
// writer, blocked reading the app, is done. The whole timeout also
// answers while the fast path reads a small body to hold before the
// first try: it waited for --request-body-timeout there.
func TestPerTryTimeoutStalledUpload(t *testing.T) {
	const limit = 4 * uploadPerTry // the whole timeout, or the body idle limit
	for _, tc := range pertryUploads {
		for _, timeout := range []bool{true, false} {
			name := tc.name + ", body idle limit"
			if timeout {
				name = tc.name + ", timeout"
			}
			t.Run(name, func(t *testing.T) {
				ended := make(chan time.Time, 4)
				addr, hits := newRawUpstream(t, func(c net.Conn, _ *http.Request) {
					_, _ = io.Copy(io.Discard, c)
					ended <- time.Now()
				})
				al := &accessLog{}
				idle, pol := 20*time.Second, pertryPolicy(tc.attempts, limit.String())
				if !timeout {
					idle, pol = limit, pertryPolicy(tc.attempts, "")
				}
				sc := startSidecar(t, pol, resolve(addr, geo), withRequestBodyTimeout(idle), withAccessLog(al))
				start := time.Now()
				resp, body, elapsed, closed := sendStalled(t, sc, tc.length, tc.first, 10*time.Second)
				code, kind := http.StatusGatewayTimeout, "timeout"
				if timeout {
					expectSidecarError(t, resp, body, code, kind, geo)
				} else {
					code, kind = http.StatusRequestTimeout, "bad-request"
					expectRefusal(t, resp, body, code, kind)
				}
				if e := al.wait(t, 1, 2*time.Second)[0]; e.Status != code || e.Error != kind {
					t.Errorf("access log status %d error %q, want %d %s", e.Status, e.Error, code, kind)
				}
				if elapsed < limit || elapsed > limit+3*time.Second {
					t.Errorf("answer after %v, want it at the %v limit", elapsed, limit)
				}
				if !closed {
					t.Error("connection kept after the answer: the rest of the body is unread")
				}
				if hits.Load() == 0 {
					if tc.streamed {
						t.Error("no try reached the upstream")
					}
					return
				}
				select {
				case at := <-ended:
					if d := at.Sub(start); d < limit {
						t.Errorf("the try's upstream connection closed %v after the request began, before the %v limit: the per-try timeout ran while the app's body stalled", d, limit)
					}
				case <-time.After(5 * time.Second):
					t.Error("the try's upstream connection was not closed")
				}
			})
		}
	}
}

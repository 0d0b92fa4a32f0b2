package outbound_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// blackHole is an upstream that reads whatever it is sent and never
// answers, until the sidecar closes the connection.
func blackHole(t *testing.T) string {
	t.Helper()
	addr, _ := newRawUpstream(t, func(c net.Conn, req *http.Request) {
		_, _ = io.Copy(io.Discard, c)
	})
	return addr
}

// sendStalled writes a request head announcing length body bytes and the
// first sent of them, then nothing more; it returns the answer and when
// it came, and reports whether the sidecar closed the connection after
// it.
func sendStalled(t *testing.T, sc *testSidecar, length, sent int, within time.Duration) (resp *http.Response, body []byte, elapsed time.Duration, closed bool) {
	t.Helper()
	c := dialSidecar(t, sc)
	start := time.Now()
	_ = c.SetDeadline(start.Add(within))
	head := "POST http://" + geo + "/upload HTTP/1.1\r\nHost: " + geo + "\r\nContent-Length: " + strconv.Itoa(length) + "\r\n\r\n"
	if _, err := io.WriteString(c, head+strings.Repeat("x", sent)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer %v after the body stalled: %v", time.Since(start), err)
	}
	body, err = io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	elapsed = time.Since(start)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = br.Read(make([]byte, 1))
	var ne net.Error
	closed = err != nil && !(errors.As(err, &ne) && ne.Timeout())
	return resp, body, elapsed, closed
}

// TestTimeoutStalledBody: the policy's timeout answers 504 at the
// timeout, even while the app's request body is stalled on its way to
// an upstream that never answers (http.Transport waits for its body
// writer, blocked reading the app: the answer came at the body idle
// limit, 30 s, or twice it). The timeout is the upstream's failure
// (access log, metric, breaker), and the connection closes after the
// answer, since the rest of the body is unread.
func TestTimeoutStalledBody(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, tc := range []struct{ length, sent int }{
		{100000, 0}, {100000, 5000},
		{1000, 10}, // a body the lean loop serves itself (up to 16 KiB), not all there
	} {
		t.Run(strconv.Itoa(tc.sent)+" of "+strconv.Itoa(tc.length)+" bytes", func(t *testing.T) {
			al := &accessLog{}
			sc := startSidecar(t, policyDoc("geo", "geo-service", "timeout: 300ms\ncircuitBreaker: {consecutiveFailures: 1, openTimeout: 30s}"),
				resolve(blackHole(t), geo), withRequestBodyTimeout(20*time.Second), withAccessLog(al))
			resp, body, elapsed, closed := sendStalled(t, sc, tc.length, tc.sent, 10*time.Second)
			expectSidecarError(t, resp, body, http.StatusGatewayTimeout, "timeout", geo)
			t.Logf("504 after %v", elapsed)
			if elapsed > 3*time.Second {
				t.Errorf("504 after %v, want it at the %v timeout", elapsed, timeout)
			}
			if !resp.Close || !closed {
				t.Errorf("connection kept after the 504 (Connection %q, closed %v): the rest of the body is unread", resp.Header.Get("Connection"), closed)
			}
			e := al.wait(t, 1, 2*time.Second)[0]
			if e.Status != http.StatusGatewayTimeout || e.Error != "timeout" {
				t.Errorf("access log status %d error %q, want 504 timeout", e.Status, e.Error)
			}
			if got := sc.metric("minimesh_requests_total", "destination", geo, "code", "504"); got != 1 {
				t.Errorf("requests_total{504} = %v, want 1", got)
			}
			if b := sc.breaker(geo); b.State != "open" {
				t.Errorf("breaker %s: want the timeout counted, the breaker (consecutiveFailures: 1) open", b.State)
			}
		})
	}
}

// TestStalledBodyIdleLimit: --request-body-timeout ends a stalled body
// at its figure after the app's last byte, not up to twice it: bytes in
// the watch's first period made it wait a second period.
func TestStalledBodyIdleLimit(t *testing.T) {
	const idle = time.Second
	u := blackHole(t)
	sc := startSidecar(t, "", resolve(u, geo), withRequestBodyTimeout(idle))
	resp, body, elapsed, closed := sendStalled(t, sc, 100000, 5000, 10*time.Second)
	expectRefusal(t, resp, body, http.StatusRequestTimeout, "bad-request")
	// The limit is exact but for the timer's lateness: the slack is the
	// machine's, far below the second period the old watch waited.
	if elapsed < idle || elapsed > idle+idle/2 {
		t.Errorf("408 after %v, want it %v after the last byte", elapsed, idle)
	}
	if !closed {
		t.Error("the connection stayed open after the 408")
	}
}

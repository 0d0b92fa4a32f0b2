package outbound_test

import (
	"bufio"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestUpgradeTimeoutBeforeSwitch: the policy's timeout bounds the wait
// for an upgrade's response head (an upstream that never answers was
// waited for as long as it liked): 504 timeout at the timeout, the
// connection closed after it, recorded as the upstream's timeout in the
// access log, the metric and the breaker. A switched connection outlives
// the timeout (TestWebSocketEcho). perTryTimeout the same.
func TestUpgradeTimeoutBeforeSwitch(t *testing.T) {
	for name, policy := range map[string]string{
		"timeout": "timeout: 300ms\n",
		// attempts 0: the one try's limit, without a retry to wait for.
		"perTryTimeout": "retries: {attempts: 0, perTryTimeout: 300ms}\n",
	} {
		t.Run(name, func(t *testing.T) { testUpgradeTimeoutBeforeSwitch(t, policy) })
	}
}

func testUpgradeTimeoutBeforeSwitch(t *testing.T, policy string) {
	al := &accessLog{}
	sc := startSidecar(t, policyDoc("geo", "geo-service", policy+"circuitBreaker: {consecutiveFailures: 1, openTimeout: 30s}"),
		resolve(blackHole(t), geo), withAccessLog(al))
	c := dialSidecar(t, sc)
	start := time.Now()
	_ = c.SetDeadline(start.Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET http://"+geo+"/ws HTTP/1.1\r\nHost: "+geo+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer %v after the upgrade request: %v", time.Since(start), err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	elapsed := time.Since(start)
	expectSidecarError(t, resp, body, http.StatusGatewayTimeout, "timeout", geo)
	if elapsed > 3*time.Second {
		t.Errorf("504 after %v, want it at the 300ms timeout", elapsed)
	}
	if !resp.Close {
		t.Errorf("the 504 to an upgrade keeps the connection (Connection %q)", resp.Header.Get("Connection"))
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
}

package inbound

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/wellknown"
)

// Found in a review of the inbound path (2026-12-02): each test fails
// without its fix.

// recorded waits for the request's metric line (finish runs after the
// caller has its answer) and returns the requests_total lines.
func recorded(t *testing.T, r *rig) string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if m := grep(gather(t, r.m), "minimesh_requests_total{"); m != "" {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatal("no request recorded")
		}
	}
}

// exchange sends raw, one request as the bytes of a caller, on a
// connection of its own, and returns the answer's head.
func (r *rig) exchange(t *testing.T, raw string) *http.Response {
	t.Helper()
	c, err := net.Dial("tcp", r.front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestAppBodyCutAfterHeaders: an app that sends its status and then fails
// (here: dies 7 bytes or 64 KiB into a body of a million) is recorded as
// the 502 reset it was, in the metric and the log line, not as its 200.
func TestAppBodyCutAfterHeaders(t *testing.T) {
	for _, n := range []int{7, 64 << 10} {
		t.Run(map[int]string{7: "small", 64 << 10: "large"}[n], func(t *testing.T) {
			r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Length", "1000000")
				w.WriteHeader(http.StatusOK)
				io.WriteString(w, strings.Repeat("p", n))
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler) // the app dies mid-body
			}), Config{})
			if resp, err := http.Get("http://" + r.front + "/x"); err == nil {
				if _, err := io.ReadAll(resp.Body); err == nil {
					t.Error("the caller read a cut body whole")
				}
				resp.Body.Close()
			}
			if m := recorded(t, r); !strings.Contains(m, `code="502"`) {
				t.Errorf("a response cut after its headers was recorded as\n%s", m)
			}
			if l := r.logLines(t); len(l) != 1 || l[0]["error"] != wellknown.ErrorReset || l[0]["status"] != float64(502) {
				t.Errorf("access log %v, want one line with status 502 and error reset", l)
			}
		})
	}
}

// TestCallerAbortsUpload: a caller that goes away in the middle of its
// request body is its own failure (499), never the app's 502: the
// transport may report the body's error before the server cancels the
// request.
func TestCallerAbortsUpload(t *testing.T) {
	for range 10 { // the race went either way about half the time
		r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			io.Copy(io.Discard, req.Body)
			io.WriteString(w, "ok")
		}), Config{})
		c, err := net.Dial("tcp", r.front)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("x", 1000))
		<-r.seen // the app is reading the body
		c.Close()
		if m := recorded(t, r); !strings.Contains(m, `code="499"`) {
			t.Fatalf("the caller's aborted upload was recorded as\n%s", m)
		}
	}
}

// TestCallerLeavesMidResponse: a caller that goes away while the app's
// response is on its way (a streamed body it stops reading, its timeout)
// is its own failure, 499, in the metric and the log line: it was the
// app's 200 (a probe, session 33; outbound already said 499).
func TestCallerLeavesMidResponse(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.WriteString(w, "first line\n")
		w.(http.Flusher).Flush()
		select { // more, later: the caller will not wait for it
		case <-req.Context().Done():
		case <-release:
		}
	}), Config{})
	c, err := net.Dial("tcp", r.front)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /stream HTTP/1.1\r\nHost: app\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "first line\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	c.Close() // the caller leaves mid-response
	if m := recorded(t, r); !strings.Contains(m, `code="499"`) {
		t.Fatalf("a caller that left mid-response was recorded as\n%s", m)
	}
	if l := r.logLines(t); len(l) != 1 || l[0]["status"] != float64(499) || l[0]["error"] != nil {
		t.Errorf("access log %v, want one line with status 499 and no error", l)
	}
}

// TestChunkedRequestCloses: a request with Transfer-Encoding (here with a
// Content-Length too, RFC 9112 §6.1) closes its connection after the
// response, and what the caller pipelined behind it is not served: the
// inbound path kept the connection, where outbound closes it (a probe,
// session 33). So also when the app sends a 103 first: the ReverseProxy
// clears the header map after a 1xx, and took the close with it (session
// 44).
func TestChunkedRequestCloses(t *testing.T) {
	for _, early := range []bool{false, true} {
		t.Run(map[bool]string{false: "final answer alone", true: "103 first"}[early], func(t *testing.T) {
			r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				io.Copy(io.Discard, req.Body)
				if early {
					w.WriteHeader(http.StatusEarlyHints)
				}
				io.WriteString(w, "ok "+req.URL.Path)
			}), Config{})
			c, err := net.Dial("tcp", r.front)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, "POST /first HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"+
				"GET /second HTTP/1.1\r\nHost: app\r\n\r\n")
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if early && resp.StatusCode == http.StatusEarlyHints {
				if resp, err = http.ReadResponse(br, nil); err != nil {
					t.Fatal(err)
				}
			}
			body, _ := io.ReadAll(resp.Body)
			if string(body) != "ok /first" || !resp.Close {
				t.Fatalf("first answer %q, Connection: close %v: want ok /first and a close", body, resp.Close)
			}
			if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
				t.Fatalf("after the chunked request's answer: %q, %v; want the connection closed, nothing more", rest, err)
			}
		})
	}
}

// TestMalformedRequestBody: a request body the server cannot read (bad
// chunked framing) from a caller still there is its 400 bad-request, not
// the app's 502.
func TestMalformedRequestBody(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		io.WriteString(w, "ok")
	}), Config{})
	resp := r.exchange(t, "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorBadRequest {
		t.Errorf("bad chunked framing: %d %q, want 400 bad-request", resp.StatusCode, resp.Header.Get(wellknown.HeaderError))
	}
}

// TestUpgradeWhileDraining: while the sidecar drains, an upgrade's 101
// keeps Connection: Upgrade (a WebSocket client would refuse the
// handshake the app accepted; the ReverseProxy answered 502 reset).
func TestUpgradeWhileDraining(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		line, _ := brw.ReadString('\n')
		io.WriteString(c, "echo: "+line)
	}), Config{})
	r.h.SetDraining(true)
	c, err := net.Dial("tcp", r.front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || !strings.EqualFold(resp.Header.Get("Connection"), "upgrade") {
		t.Fatalf("upgrade while draining: %d, Connection %q; want 101 with Connection: Upgrade", resp.StatusCode, resp.Header.Values("Connection"))
	}
	io.WriteString(c, "hi\n")
	if line, _ := br.ReadString('\n'); line != "echo: hi\n" {
		t.Errorf("through the upgraded connection: %q", line)
	}
}

// TestRequestIDNotHopByHop: a caller naming X-Request-ID in Connection
// does not strip it from the app's request: the app always gets one.
func TestRequestIDNotHopByHop(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), Config{})
	resp := r.exchange(t, "GET / HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, X-Request-ID\r\nX-Request-ID: caller-id\r\n\r\n")
	if got := (<-r.seen).Header.Values(wellknown.HeaderRequestID); len(got) != 1 || got[0] != "caller-id" || resp.Header.Get(wellknown.HeaderRequestID) != "caller-id" {
		t.Errorf("the app saw X-Request-ID %q, the caller got back %q; want the caller's one both", got, resp.Header.Get(wellknown.HeaderRequestID))
	}
}

// TestAbsoluteFormRefused: an absolute-form http:// request after a
// connection's first is 400 (docs/interception.md), not forwarded with
// the Host of its URL.
func TestAbsoluteFormRefused(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "app") }), Config{})
	resp := r.exchange(t, "GET http://elsewhere.example:15020/debug/config HTTP/1.1\r\nHost: elsewhere.example:15020\r\n\r\n")
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorBadRequest {
		t.Errorf("absolute-form http:// request: %d %q, want 400 bad-request", resp.StatusCode, resp.Header.Get(wellknown.HeaderError))
	}
}

// TestDrainEndCutsRequest: a request whose connection the drain's end
// closes (closing set, as Drain sets it when its time is up) is recorded
// as outbound records it, 503 with error shutdown, not as the 499 of a
// caller that went away.
func TestDrainEndCutsRequest(t *testing.T) {
	entered := make(chan struct{}, 1)
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		entered <- struct{}{}
		<-req.Context().Done()
	}), Config{})
	c, err := net.Dial("tcp", r.front)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: app\r\n\r\n")
	<-entered
	r.h.closing.Store(true) // the drain's time is up
	c.Close()               // as the sidecar's CloseAll closes it
	if m := recorded(t, r); !strings.Contains(m, `code="503"`) {
		t.Fatalf("a request cut by the drain's end was recorded as\n%s", m)
	}
	if l := r.logLines(t); len(l) != 1 || l[0]["status"] != float64(503) || l[0]["error"] != "shutdown" {
		t.Errorf("access log %v, want one line with status 503 and error shutdown", l)
	}
}

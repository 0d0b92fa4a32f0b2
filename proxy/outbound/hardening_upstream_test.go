package outbound_test

// Upstreams that misbehave after their headers, or with them: what a
// differential probe of the fast transport against http.Transport found
// (session 27). Each failure reaches the app as a failure, and is
// recorded as one.

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// TestStreamFailedAtFirstByteNeverEndsClean: a 200 with a chunked body
// whose first chunk size is bad. The ReverseProxy flushes a stream's
// headers from a timer's goroutine at once (its copyResponse), while the
// handler's goroutine reads the body: the status's fate was a plain bool
// both touched (a data race under -race), and a read that saw it unsent
// just before the flush sent it made a clean, empty 200 of the failure.
// Now the app gets the sidecar's 502 or a 200 cut short, never a 200
// that ends as if whole (RFC 9112 §6.3). Through the ReverseProxy: GET
// with StdTransport, and a POST (a body) by default.
func TestStreamFailedAtFirstByteNeverEndsClean(t *testing.T) {
	for _, p := range []struct {
		name, method string
		opts         []sidecarOpt
	}{
		{"std GET", "GET", []sidecarOpt{withStdTransport()}},
		// The default sidecar: a request with a body goes through the
		// ReverseProxy and http.Transport too.
		{"default POST", "POST", nil},
	} {
		t.Run(p.name, func(t *testing.T) {
			addr, _ := newRawUpstream(t, func(c net.Conn, req *http.Request) {
				_, _ = io.Copy(io.Discard, req.Body)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n")
			})
			sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 1000, openTimeout: 30s}"),
				resolve(addr, geo), p.opts...)
			outcomes := map[string]int{}
			for i := 0; i < 200; i++ {
				c, err := net.DialTimeout("tcp", sc.Addr, 2*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if p.method == "POST" {
					fmt.Fprintf(c, "POST http://%s/ HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\n\r\nhi", geo, geo)
				} else {
					fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", geo, geo)
				}
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				switch {
				case err != nil:
					outcomes["no response"]++
				default:
					_, rerr := io.ReadAll(resp.Body)
					switch {
					case resp.StatusCode == http.StatusBadGateway:
						outcomes["sidecar 502"]++
					case rerr != nil:
						outcomes[fmt.Sprintf("%d cut", resp.StatusCode)]++
					default:
						outcomes[fmt.Sprintf("%d CLEAN", resp.StatusCode)]++
					}
				}
				c.Close()
			}
			t.Logf("outcomes: %v", outcomes)
			if n := outcomes["200 CLEAN"]; n > 0 {
				t.Errorf("%d of 200 answers were a clean 200 with an empty body for an upstream body that failed at its first byte", n)
			}
		})
	}
}

// TestUnaskedSwitchIsAFailure: a 101 to a request that asked for no
// upgrade (RFC 9110 §15.2.2). Every path answers the app 502 reset; the
// ReverseProxy's path told the breaker the try succeeded.
func TestUnaskedSwitchIsAFailure(t *testing.T) {
	for _, p := range []struct {
		name, method string
		opts         []sidecarOpt
	}{{"fast GET", "GET", nil}, {"std GET", "GET", []sidecarOpt{withStdTransport()}}, {"default POST", "POST", nil}} {
		t.Run(p.name, func(t *testing.T) {
			addr, _ := newRawUpstream(t, func(c net.Conn, req *http.Request) {
				_, _ = io.Copy(io.Discard, req.Body)
				_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			})
			sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 1000, openTimeout: 30s}"),
				resolve(addr, geo), p.opts...)
			var rb io.Reader
			if p.method == "POST" {
				rb = strings.NewReader("hi")
			}
			req, err := http.NewRequest(p.method, "http://"+geo+"/", rb)
			if err != nil {
				t.Fatal(err)
			}
			resp, body := fetch(t, sc.Client(), req)
			if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Minimesh-Error") != "reset" {
				t.Fatalf("app got %d %q, want the sidecar's 502 reset", resp.StatusCode, body)
			}
			if !strings.Contains(string(body), geo) {
				// Cosmetic: the ReverseProxy's own error text, not the sidecar's.
				t.Logf("the 502's message does not name %s: %s", geo, body)
			}
			if got := sc.metric("minimesh_requests_total", "destination", geo, "code", "502"); got != 1 {
				t.Errorf("requests_total{code=502} = %v, want 1", got)
			}
			if b := sc.breaker(geo); b.Counts.TotalFailures != 1 || b.Counts.TotalSuccesses != 0 {
				t.Errorf("breaker counts %+v: the app got a 502 reset, the breaker must count a failure, not a success", b.Counts)
			}
		})
	}
}

// TestResponseHeadLimit: a response head over MaxHeaderBytes (64 KiB,
// docs/operations.md) is the upstream's failure, 502 reset, on the fast
// transport as on http.Transport; the fast one read a 4 KiB buffer past
// the bound before it checked it.
func TestResponseHeadLimit(t *testing.T) {
	const limit = 64 << 10 // outbound.MaxHeaderBytes
	for _, tc := range []struct {
		size int // the whole head's bytes, its last CRLF included
		code int
	}{
		{limit, http.StatusOK}, {limit + 1, http.StatusBadGateway},
		{65 << 10, http.StatusBadGateway}, {67 << 10, http.StatusBadGateway},
	} {
		pre, post := "HTTP/1.1 200 OK\r\nX-Big: ", "\r\nContent-Length: 2\r\n\r\n"
		head := pre + strings.Repeat("a", tc.size-len(pre)-len(post)) + post
		for _, p := range []struct {
			name string
			opts []sidecarOpt
		}{{"fast", nil}, {"std", []sidecarOpt{withStdTransport()}}} {
			t.Run(p.name+"/"+strconv.Itoa(tc.size), func(t *testing.T) {
				addr, _ := newRawUpstream(t, func(c net.Conn, _ *http.Request) { _, _ = io.WriteString(c, head+"ok") })
				sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 1000, openTimeout: 30s}"),
					resolve(addr, geo), p.opts...)
				resp, body := get(t, sc.Client(), "http://"+geo+"/")
				if resp.StatusCode != tc.code || tc.code == http.StatusBadGateway && resp.Header.Get("X-Minimesh-Error") != "reset" {
					t.Errorf("a response head of %d bytes: app got %d %q (%d header bytes passed on), want %d (limit %d, 502 reset beyond)",
						tc.size, resp.StatusCode, resp.Header.Get("X-Minimesh-Error"), len(resp.Header.Get("X-Big")), tc.code, limit)
				}
				if tc.code == http.StatusOK && string(body) != "ok" {
					t.Errorf("body %q", body)
				}
			})
		}
	}
}

// TestUnaskedBytesNeverAnAnswer: an upstream that now and then sends a
// second, unasked response with an answer, in the same write, to
// concurrent apps: the fast transport never hands one to the next
// request on that connection (it keeps no connection with bytes left
// over, and its look before a reuse, rawio.Exchange, refuses one with
// unasked bytes). Bytes that come in a write of their own may arrive
// after the next request went out, and then no HTTP/1.1 client can
// tell them from its answer: fresh-clone CI saw it once in 900 with
// --raw-io=false, where the look and the write are two system calls.
// http.Transport, which sends requests with bodies, does not promise as
// much: the probe saw it pass 1-2 in 900 on (a race in net/http's
// persistConn between its idle read and a reuse; not this package's),
// so this test asks for the fast transport in the suite's std run too.
func TestUnaskedBytesNeverAnAnswer(t *testing.T) {
	var conns atomic.Int32
	addr, _ := proxytest.RawServer(t, func(c net.Conn, n int) {
		conns.Add(1)
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			path := strings.Fields(line)[1]
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if l == "\r\n" {
					break
				}
			}
			ans := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(path), path)
			extra := "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n/WRONG"
			if rand.IntN(5) == 0 {
				ans += extra // in the answer's own write: it comes with it
			}
			io.WriteString(c, ans)
		}
	})
	sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 1000, openTimeout: 30s}"),
		resolve(addr, geo), withFastTransport())
	var wrong, errs, ok atomic.Int32
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := sc.Client()
			for i := 0; i < 150; i++ {
				path := fmt.Sprintf("/w%d-%d", w, i)
				resp, err := c.Get("http://" + geo + path)
				if err != nil {
					errs.Add(1)
					continue
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case err != nil || resp.StatusCode != 200:
					errs.Add(1)
				case string(b) != path:
					wrong.Add(1)
				default:
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("ok %d, errors or not 200 %d, another request's answer %d, upstream connections %d", ok.Load(), errs.Load(), wrong.Load(), conns.Load())
	if wrong.Load() > 0 {
		t.Errorf("%d answers were another request's", wrong.Load())
	}
}

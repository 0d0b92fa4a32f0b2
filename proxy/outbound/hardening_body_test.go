package outbound_test

// Issue #11, item 3: a request body the app got wrong (bad chunked
// framing, a body that stalls) is the app's 400/408, never the upstream's
// failure; a chunked request closes its connection after the answer.
// Item 9: an early answer to a large upload races nothing.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

func withRequestBodyTimeout(d time.Duration) sidecarOpt {
	return func(c *sidecar.Config) { c.RequestBodyTimeout = d }
}

// readBodyUpstream reads each request's body whole before it answers, as
// a real service does, and reports how the read ended.
func readBodyUpstream(t *testing.T, ended chan<- bodyRead) *upstream {
	return newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		b, err := io.ReadAll(r.Body)
		if ended != nil {
			select {
			case ended <- bodyRead{err, fmt.Sprintf("%s %s, Content-Length %d, Transfer-Encoding %q, %d bytes read",
				r.Method, r.URL, r.ContentLength, r.TransferEncoding, len(b))}:
			default:
			}
		}
		if err != nil {
			return
		}
		_, _ = w.Write(append([]byte("got "), b...))
	})
}

// bodyRead is how an upstream's read of a request body ended, and what
// the request was.
type bodyRead struct {
	err error
	req string
}

// TestMalformedChunkedBody: a chunked request body with broken framing
// is the app's mistake: 400 bad-request, the connection closed after it,
// and the breaker (5 consecutive failures) counts nothing, so the next
// request goes through.
func TestMalformedChunkedBody(t *testing.T) {
	u := readBodyUpstream(t, nil)
	sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 5, openTimeout: 30s}"), resolve(u.Host(), geo))
	malformed := []struct{ name, body string }{
		{"chunk size not hex", "zz\r\n"},
		{"no CRLF after chunk data", "5\r\nhelloXX0\r\n\r\n"},
		{"chunk size overflows", "fffffffffffffffffffff\r\nx\r\n0\r\n\r\n"},
		{"negative chunk size", "-1\r\nx\r\n0\r\n\r\n"},
		{"bad first chunk after a good one", "5\r\nhello\r\nqq\r\n"},
	}
	const requests = 10
	for i := range requests {
		m := malformed[i%len(malformed)]
		t.Run(m.name, func(t *testing.T) {
			raw := "POST http://" + geo + "/upload HTTP/1.1\r\nHost: " + geo + "\r\nTransfer-Encoding: chunked\r\n\r\n" + m.body
			resp, body := rawRoundTrip(t, sc.Addr, raw)
			e := expectRefusal(t, resp, body, http.StatusBadRequest, "bad-request")
			if e.Destination != geo {
				t.Errorf("body names destination %q, want %s", e.Destination, geo)
			}
			if !resp.Close {
				t.Errorf("answer to a request whose body could not be read keeps the connection (Connection %q)", resp.Header.Get("Connection"))
			}
		})
	}
	st := sc.breaker(geo)
	if st.State != "closed" || st.Counts.TotalFailures != 0 || st.Counts.ConsecutiveFailures != 0 {
		t.Fatalf("breaker after %d malformed bodies: %+v, want closed with no failures", requests, st)
	}
	if got := sc.metric("minimesh_requests_total", "destination", geo, "code", "400"); got != requests {
		t.Errorf("requests_total{code=400} = %v, want %d", got, requests)
	}
	if resp, body := get(t, sc.Client(), "http://"+geo+"/after"); resp.StatusCode != http.StatusOK || string(body) != "got " {
		t.Fatalf("GET after the malformed bodies: %d %q, want the upstream's 200", resp.StatusCode, body)
	}
}

// TestStalledRequestBody: an app that sends 10 bytes of its body and
// stops gets 408 bad-request once RequestBodyTimeout has passed without
// progress, and the breaker counts nothing. A body streamed to the
// upstream (without retries: it had not arrived whole) ends the
// upstream's request too (its body read fails). A body read whole before
// the first try, on the handler's goroutine (to be sent again with
// retries, small or not), must end with the timeout too; the upstream
// never hears of it.
func TestStalledRequestBody(t *testing.T) {
	const idle = 300 * time.Millisecond
	for _, tc := range []struct {
		name, policy, method string
		length               int
	}{
		{"no retries", "circuitBreaker: {consecutiveFailures: 1, openTimeout: 30s}", http.MethodPost, 1000},
		{"no retries, large", "circuitBreaker: {consecutiveFailures: 1, openTimeout: 30s}", http.MethodPost, 100000},
		{"retries", "retries: {attempts: 2}\ncircuitBreaker: {consecutiveFailures: 1, openTimeout: 30s}", http.MethodPut, 1000},
		{"retries, large", "retries: {attempts: 2}\ncircuitBreaker: {consecutiveFailures: 1, openTimeout: 30s}", http.MethodPut, 50000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ended := make(chan bodyRead, 1)
			u := readBodyUpstream(t, ended)
			sc := startSidecar(t, policyDoc("geo", "geo-service", tc.policy), resolve(u.Host(), geo), withRequestBodyTimeout(idle))
			c := dialSidecar(t, sc)
			start := time.Now()
			_ = c.SetDeadline(start.Add(2*idle + 2*time.Second))
			if _, err := io.WriteString(c, tc.method+" http://"+geo+"/upload HTTP/1.1\r\nHost: "+geo+"\r\nContent-Length: "+strconv.Itoa(tc.length)+"\r\n\r\n0123456789"); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer %v after the body stalled: %v", time.Since(start), err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("reading the answer: %v", err)
			}
			elapsed := time.Since(start)
			e := expectRefusal(t, resp, body, http.StatusRequestTimeout, "bad-request")
			if e.Destination != geo {
				t.Errorf("body names destination %q, want %s", e.Destination, geo)
			}
			// No progress is noticed within one to two idle periods.
			if elapsed < idle || elapsed > 2*idle+time.Second {
				t.Errorf("408 after %v, want between %v and %v", elapsed, idle, 2*idle+time.Second)
			}
			if !resp.Close {
				t.Errorf("the 408 keeps the connection (Connection %q): the rest of the body cannot be told from the next request", resp.Header.Get("Connection"))
			}
			var ne net.Error
			if n, err := br.Read(make([]byte, 1)); err == nil {
				t.Errorf("the connection stayed open after the 408 (%d more bytes)", n)
			} else if errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("the connection stayed open after the 408, until the app's deadline")
			}
			if !strings.HasPrefix(tc.name, "retries") {
				// The upstream had the request; its body read ends.
				select {
				case got := <-ended:
					if got.err == nil {
						t.Fatalf("the upstream read a whole body: %s", got.req)
					}
				case <-time.After(2 * time.Second):
					t.Fatal("the upstream request still waits for its body 2s after the 408")
				}
			} else if n := u.hits.Load(); n != 0 {
				// A try starts before the 408 if at all: read first, the
				// body never reached it.
				t.Errorf("the upstream had %d requests of a body that never came whole", n)
			}
			if st := sc.breaker(geo); st.State != "closed" || st.Counts.TotalFailures != 0 {
				t.Fatalf("breaker %+v, want closed with no failures", st)
			}
		})
	}
}

// TestChunkedRequestClosesConnection: a request with Transfer-Encoding
// (here beside a Content-Length, which Go's server drops) is answered
// with "Connection: close" and the connection closes after that answer
// (RFC 9112 §6.1): a request pipelined behind it is never read, whatever
// the upstream answered.
func TestChunkedRequestClosesConnection(t *testing.T) {
	echo := func(t *testing.T) (string, func() int64) {
		u := readBodyUpstream(t, nil)
		return u.Host(), u.hits.Load
	}
	raw := func(answer string) func(t *testing.T) (string, func() int64) {
		return func(t *testing.T) (string, func() int64) {
			addr, hits := newRawUpstream(t, func(c net.Conn, req *http.Request) {
				_, _ = io.Copy(io.Discard, req.Body)
				_, _ = io.WriteString(c, answer)
				resetConn(c)
			})
			return addr, hits.Load
		}
	}
	for _, tc := range []struct {
		name     string
		upstream func(t *testing.T) (string, func() int64)
		code     int
		body     string
	}{
		{"upstream answers", echo, http.StatusOK, "got hello"},
		{"upstream sends 103 first", raw("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), http.StatusOK, "ok"},
		{"upstream fails after its headers", raw("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"), http.StatusBadGateway, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, hits := tc.upstream(t)
			sc := startSidecar(t, "", resolve(addr, geo))
			c := dialSidecar(t, sc)
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			first := "POST http://" + geo + "/upload HTTP/1.1\r\nHost: " + geo + "\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
			second := "GET http://" + geo + "/second HTTP/1.1\r\nHost: " + geo + "\r\n\r\n"
			if _, err := io.WriteString(c, first+second); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			var finals []*http.Response
			var bodies []string
			for range 4 { // bounded: at most a 103 and two answers are possible
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					if err != io.EOF && err != io.ErrUnexpectedEOF {
						t.Fatalf("after %d answers: %v, want the connection closed (EOF)", len(finals), err)
					}
					break
				}
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatalf("reading answer: %v", err)
				}
				if resp.StatusCode < 200 {
					continue
				}
				finals = append(finals, resp)
				bodies = append(bodies, string(b))
			}
			if len(finals) != 1 {
				t.Fatalf("%d answers on the connection of a chunked request (statuses %v), want exactly 1 and then EOF", len(finals), statuses(finals))
			}
			resp := finals[0]
			if resp.StatusCode != tc.code || (tc.body != "" && bodies[0] != tc.body) {
				t.Errorf("answer %d %q, want %d %q", resp.StatusCode, bodies[0], tc.code, tc.body)
			}
			if !resp.Close { // ReadResponse takes "Connection: close" out of the header into Close
				t.Errorf("answer does not carry Connection: close")
			}
			if got := hits(); got != 1 {
				t.Errorf("upstream saw %d requests, want 1 (the pipelined GET must not be read)", got)
			}
		})
	}
}

func statuses(rs []*http.Response) []int {
	out := make([]int, len(rs))
	for i, r := range rs {
		out[i] = r.StatusCode
	}
	return out
}

// TestEarlyAnswerToLargeUpload (item 9): an upstream that answers 413 at
// once, without reading a 1 MiB upload, through http.Transport and with
// an access log: the app gets the 413, each request has its log line,
// and the race detector (go test -race) sees nothing: the transport's
// reads of the app's body are over before the handler returns.
func TestEarlyAnswerToLargeUpload(t *testing.T) {
	u := newUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) {
		w.WriteHeader(http.StatusRequestEntityTooLarge)
	})
	var alog accessLog
	sc := startSidecar(t, "", resolve(u.Host(), geo), withStdTransport(), withAccessLog(&alog))
	c := sc.Client()
	upload := bytes.Repeat([]byte("x"), 1<<20)
	const rounds, workers = 20, 2
	var wg sync.WaitGroup
	errs := make(chan string, rounds)
	next := make(chan int, rounds)
	for i := range rounds {
		next <- i
	}
	close(next)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				req, _ := http.NewRequest(http.MethodPost, "http://"+geo+"/upload", bytes.NewReader(upload))
				resp, err := c.Do(req)
				if err != nil {
					errs <- "request " + strconv.Itoa(i+1) + ": " + err.Error()
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get("X-Minimesh-Error") != "" {
					errs <- "request " + strconv.Itoa(i+1) + ": " + resp.Status + " " + resp.Header.Get("X-Minimesh-Error") + ", want the upstream's 413"
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if t.Failed() {
		t.FailNow()
	}
	es := alog.wait(t, rounds, 3*time.Second)
	for i, e := range es {
		if e.Method != http.MethodPost || e.Status != http.StatusRequestEntityTooLarge || e.Error != "" || e.Destination != geo {
			t.Errorf("access log line %d: %+v, want POST %s 413 without error", i+1, e, geo)
		}
	}
	if got := sc.metric("minimesh_requests_total", "destination", geo, "code", "413"); got != rounds {
		t.Errorf("requests_total{code=413} = %v, want %d", got, rounds)
	}
}

// TestEarlyAnswerEndsConnection (item 9): when the upstream answers
// before the app's body is through, what is left of the body must never
// be read as a request of its own: the connection ends after the answer.
// Here the app sends 10 of its body's bytes, gets the upstream's early
// 413, and then sends the rest, which happens to look like a request.
func TestEarlyAnswerEndsConnection(t *testing.T) {
	var smuggled atomic.Int64
	// Answers as soon as it has the head, and reads no body (Go's server
	// would read the rest of a small body before it sent the status).
	addr, _ := newRawUpstream(t, func(c net.Conn, req *http.Request) {
		if req.URL.Path == "/smuggled" {
			smuggled.Add(1)
		}
		_, _ = io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\n\r\n")
		_, _ = io.Copy(io.Discard, c) // until the sidecar lets go
	})
	sc := startSidecar(t, "", resolve(addr, geo))
	head := "0123456789"
	tail := "GET http://" + geo + "/smuggled HTTP/1.1\r\nHost: " + geo + "\r\n\r\n"
	c := dialSidecar(t, sc)
	if _, err := io.WriteString(c, "POST http://"+geo+"/upload HTTP/1.1\r\nHost: "+geo+"\r\nContent-Length: "+strconv.Itoa(len(head)+len(tail))+"\r\n\r\n"+head); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want the upstream's early 413", resp.StatusCode)
	}
	// The pause only lets the sidecar's server get to where it would read
	// a next request; a server that (rightly) read or dropped the rest of
	// the body before passes either way.
	time.Sleep(100 * time.Millisecond)
	_, _ = io.WriteString(c, tail) // may fail: the connection should be gone
	if resp, err := http.ReadResponse(br, nil); err == nil {
		t.Errorf("the rest of the body was read as a request: a second answer %s (X-Request-ID %q) on the connection", resp.Status, resp.Header.Get("X-Request-ID"))
	}
	if got := smuggled.Load(); got != 0 {
		t.Errorf("the upstream got the body's tail as a request of its own (%d times)", got)
	}
}

// TestFullDuplexHTTP1: an HTTP/1.1 exchange whose upstream answers as it
// reads (an echo, a bidirectional stream) works through the sidecar: the
// app sends a line, reads its echo, sends the next. Without full duplex
// on the sidecar's server, Go's HTTP/1 server reads the rest of the
// request body itself as the response's header goes out, racing the
// transport that forwards it (or waiting for a line the app sends only
// after its echo).
func TestFullDuplexHTTP1(t *testing.T) {
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		br := bufio.NewReader(r.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			_, _ = io.WriteString(w, "echo "+line)
			w.(http.Flusher).Flush()
		}
	})
	sc := startSidecar(t, "", resolve(u.Host(), geo))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	defer pw.Close()
	// Past the deadline the app's body ends too: Go's client waits for
	// its body writer, which waits for the pipe.
	context.AfterFunc(ctx, func() { pw.CloseWithError(ctx.Err()) })
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+sc.Addr+"/echo", pr)
	req.Host = geo
	// A length, not chunked: the sidecar closes the connection after a
	// chunked request (RFC 9112 §6.1), and Go's server reads no body it
	// is about to close anyway.
	req.ContentLength = 5 * int64(len("ping 0\n"))
	go func() { _, _ = io.WriteString(pw, "ping 0\n") }()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	for i := range 5 {
		line, err := br.ReadString('\n')
		if want := "echo ping " + strconv.Itoa(i) + "\n"; line != want || err != nil {
			t.Fatalf("answer %d: %q (%v), want %q", i, line, err, want)
		}
		if i < 4 {
			if _, err := io.WriteString(pw, "ping "+strconv.Itoa(i+1)+"\n"); err != nil {
				t.Fatalf("sending line %d: %v", i+1, err)
			}
		}
	}
	pw.Close()
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Fatalf("after the last echo: %q, %v; want the end of the body", rest, err)
	}
}

// TestGoneMidHeldBody: an app that goes away in the middle of a small
// body the sidecar reads whole before the first try (retries) is
// recorded as gone (499), not as a request it got wrong (400), behind
// either server; the upstream never hears of it.
func TestGoneMidHeldBody(t *testing.T) {
	for _, server := range []string{sidecar.ServerLean, sidecar.ServerStd} {
		t.Run(server, func(t *testing.T) {
			u := readBodyUpstream(t, nil)
			al := &accessLog{}
			sc := startSidecar(t, policyDoc("geo", "geo-service", "retries: {attempts: 2}"), resolve(u.Host(), geo),
				withServer(server), withAccessLog(al))
			c := dialSidecar(t, sc)
			if _, err := io.WriteString(c, "POST http://"+geo+"/upload HTTP/1.1\r\nHost: "+geo+"\r\nContent-Length: 100\r\n\r\n0123456789"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond) // the sidecar reads the 10 bytes and waits
			c.Close()
			if e := al.wait(t, 1, 5*time.Second)[0]; e.Status != 499 {
				t.Errorf("app gone mid-body logged %+v, want status 499", e)
			}
			if n := u.hits.Load(); n != 0 {
				t.Errorf("the upstream had %d requests of a body that never came whole", n)
			}
		})
	}
}

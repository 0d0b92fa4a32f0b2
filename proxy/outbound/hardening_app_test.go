package outbound_test

// What a differential probe of the lean server against net/http's found
// on the app's side of the sidecar (session 27): answers the app must
// get, and a failure recorded as one.

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

// rawExchange sends head to the sidecar on a new connection and returns
// what the app reads back: the response, its body, and the raw status
// line.
func rawExchange(t *testing.T, addr, head string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	line, err := br.Peek(12)
	if err != nil {
		t.Fatalf("%q: no answer: %v", head, err)
	}
	req, _ := http.NewRequest(strings.Fields(head)[0], "http://"+geo+"/", nil)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatalf("%q: %v", head, err)
	}
	return resp, string(line)
}

// TestAnswerWithoutFields: an upstream's answer with no header field at
// all, to the first request a state serves (no room for the response's
// lines yet): the fast transport read the head as no lines, which the
// handler took for a missing header map, and panicked writing into it;
// the app got no answer and the access log a success.
func TestAnswerWithoutFields(t *testing.T) {
	for _, tc := range []struct {
		name, method, answer string
		code                 int
	}{
		{"204", "GET", "HTTP/1.1 204 No Content\r\n\r\n", 204},
		{"304", "GET", "HTTP/1.1 304 Not Modified\r\n\r\n", 304},
		{"HEAD", "HEAD", "HTTP/1.1 200 OK\r\n\r\n", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := newRawUpstream(t, func(c net.Conn, _ *http.Request) { _, _ = io.WriteString(c, tc.answer) })
			al := &accessLog{}
			sc := startSidecar(t, "", resolve(addr, geo), withAccessLog(al))
			resp, _ := rawExchange(t, sc.Addr, tc.method+" /a HTTP/1.1\r\nHost: "+geo+"\r\n\r\n")
			if resp.StatusCode != tc.code || resp.Header.Get("X-Request-Id") == "" {
				t.Errorf("app got %d %v, want %d with the request ID", resp.StatusCode, resp.Header, tc.code)
			}
			if e := al.wait(t, 1, 5*time.Second)[0]; e.Status != tc.code || e.Error != "" {
				t.Errorf("logged %+v", e)
			}
		})
	}
}

// TestGoneMidBodyRecorded: the app reads the first part of a streamed
// response and goes away while the upstream still sends. Its request did
// not succeed: 499 in the access log and the metrics (docs/operations.md),
// and no failure of the upstream's for the breaker.
func TestGoneMidBodyRecorded(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []sidecarOpt
	}{
		{"lean", []sidecarOpt{withServer(sidecar.ServerLean)}},
		{"std", []sidecarOpt{withServer(sidecar.ServerStd)}},
		{"std-transport", []sidecarOpt{withServer(sidecar.ServerLean), withStdTransport()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
				_, _ = io.WriteString(w, "first line\n")
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
				case <-time.After(5 * time.Second):
				}
				_, _ = io.WriteString(w, "second line\n")
			})
			al := &accessLog{}
			sc := startSidecar(t, policyDoc("geo", "geo-service", "circuitBreaker: {consecutiveFailures: 1000, openTimeout: 30s}"),
				resolve(u.Host(), geo), append(tc.opts, withAccessLog(al))...)
			c, err := net.Dial("tcp", sc.Addr)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.WriteString(c, "GET http://"+geo+"/x HTTP/1.1\r\nHost: "+geo+"\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(resp.Body, make([]byte, len("first line\n"))); err != nil {
				t.Fatal(err)
			}
			c.Close()
			if e := al.wait(t, 1, 5*time.Second)[0]; e.Status != 499 {
				t.Errorf("app gone mid-body logged %+v, want status 499", e)
			}
			if n := sc.metric("minimesh_requests_total", "destination", geo, "code", "499"); n != 1 {
				t.Errorf("minimesh_requests_total{code=499} = %v, want 1", n)
			}
			if b := sc.breaker(geo); b.Counts.TotalFailures != 0 {
				t.Errorf("breaker counts %+v: the app's leaving is not the upstream's failure", b.Counts)
			}
		})
	}
}

// TestNo1xxToHTTP10: RFC 9110 §15.2: "A server MUST NOT send a 1xx
// response to an HTTP/1.0 client", which would take it for the final
// answer and the real one for its body. An HTTP/1.1 app still gets it.
func TestNo1xxToHTTP10(t *testing.T) {
	addr, _ := newRawUpstream(t, func(c net.Conn, _ *http.Request) {
		_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	for _, server := range []string{sidecar.ServerLean, sidecar.ServerStd} {
		t.Run(server, func(t *testing.T) {
			sc := startSidecar(t, "", resolve(addr, geo), withServer(server))
			for _, tc := range []struct{ head, first string }{
				{"GET http://" + geo + "/a HTTP/1.0\r\n\r\n", "HTTP/1.0 200"},
				{"GET http://" + geo + "/a HTTP/1.1\r\nHost: " + geo + "\r\n\r\n", "HTTP/1.1 103"},
			} {
				if _, first := rawExchange(t, sc.Addr, tc.head); first != tc.first {
					t.Errorf("%q: the app's first status line starts %q, want %q", tc.head, first, tc.first)
				}
			}
		})
	}
}

// TestUploadAbandonedWhileFlushing: an upstream answers a chunked
// upload that is still coming with a stream of its own (an empty chunked
// 200), on net/http's server: the app gets the answer and its connection
// closes after it. The answer's end abandons the upload (net/http's
// response told to close after it) while the ReverseProxy's timer may
// be flushing the stream's headers from a goroutine of its own: both
// change net/http's response, its header map among it, so they take
// turns (countingWriter.mu). A review saw -race report the two at once
// in 100 such exchanges; this test has not caught it in 2,000 before
// the fix: under -race, it guards the way, not the race.
func TestUploadAbandonedWhileFlushing(t *testing.T) {
	addr, _ := newRawUpstream(t, func(c net.Conn, req *http.Request) {
		_, _ = io.ReadFull(req.Body, make([]byte, len("hello"))) // the upload under way
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	})
	sc := startSidecar(t, "", resolve(addr, geo), withServer(sidecar.ServerStd))
	for i := 0; i < 50; i++ {
		c, err := net.Dial("tcp", sc.Addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "POST http://"+geo+"/up HTTP/1.1\r\nHost: "+geo+"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("try %d: %v", i, err)
		}
		if resp.StatusCode != http.StatusOK || !resp.Close {
			t.Errorf("try %d: %d, close %v: want the upstream's 200 and the connection closed after it", i, resp.StatusCode, resp.Close)
		}
		c.Close()
	}
}

// TestLongHostRefused: a host:port longer than a DNS name can be is
// refused with 400 on every way a request names it (absolute form,
// origin form with Host, CONNECT), and the sidecar keeps nothing of it:
// each such authority took a place among the 16,384 the sidecar
// remembers (with a breaker), 60 KB apiece, and a copy of them all.
func TestLongHostRefused(t *testing.T) {
	// The longest a DNS name can be is still served (here: a port where
	// nothing listens).
	ok := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 53) + ".invalid"
	sc := startSidecar(t, "", map[string]string{ok + ":80": "127.0.0.1:1"})
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 63) + ".example"
	for _, head := range []string{
		"GET http://" + long + "/ HTTP/1.1\r\nHost: " + long + "\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: " + long + "\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: " + long + ":8080\r\n\r\n",
		"CONNECT " + long + ":443 HTTP/1.1\r\nHost: " + long + ":443\r\n\r\n",
	} {
		resp, _ := rawExchange(t, sc.Addr, head)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("X-Minimesh-Error") != "bad-request" {
			t.Errorf("%.40q…: %d %q, want 400 bad-request", head, resp.StatusCode, resp.Header.Get("X-Minimesh-Error"))
		}
	}
	for name := range sc.breakers() {
		if len(name) > 259 {
			t.Errorf("a breaker for a %d-byte destination", len(name))
		}
	}
	resp, _ := rawExchange(t, sc.Addr, "GET http://"+ok+"/ HTTP/1.1\r\nHost: "+ok+"\r\n\r\n")
	resp.Body.Close()
	if len(ok) != 253 || resp.StatusCode != http.StatusBadGateway {
		t.Errorf("a %d-byte host: %d, want it tried (502: nothing listens)", len(ok), resp.StatusCode)
	}
}

package leanhttp

import (
	"bufio"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// te10Server serves a handler that records each request it gets, behind
// the lean loop (lean) or net/http alone on guarded connections.
type te10Server struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func (s *te10Server) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

func startTE10Server(t *testing.T, lean bool) *te10Server {
	t.Helper()
	s := &te10Server{}
	std := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			s.mu.Lock()
			s.seen = append(s.seen, r.Method+" "+r.URL.Path+" "+r.Proto+" body bytes "+strconv.Itoa(len(b)))
			s.mu.Unlock()
			w.Header().Set("Content-Length", "2")
			_, _ = io.WriteString(w, "ok")
		}),
		ErrorLog: log.New(io.Discard, "", 0),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	if lean {
		ls := New(std)
		go ls.ServeStd()
		go ls.Serve(ln)
		t.Cleanup(func() { ls.Close() })
	} else {
		go std.Serve(GuardListener(ln))
		t.Cleanup(func() { std.Close() })
	}
	return s
}

// answersUntilClose writes raw on a new connection, without the
// half-close of exchange (which would end the connection whatever the
// server thinks of it), and reads every answer until the server closes
// it (or 5 s pass: then closed is false).
func answersUntilClose(t *testing.T, addr, raw string) (codes []int, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return codes, false
			}
			return codes, true
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
}

// TestHTTP10TransferEncoding: an HTTP/1.0 request with Transfer-Encoding
// (any spelling, any count of fields) is answered 400 and its connection
// closed; no handler sees it, nor its body as a next request (net/http
// took it without its body, and the body's bytes as a request:
// golang/go#12785). The same on a connection the lean loop handed off
// (after a chunked or a large body, whose framing the guard follows) and
// behind net/http alone (GuardConn).
func TestHTTP10TransferEncoding(t *testing.T) {
	const smuggled = "GET /smuggled HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
	chunk := func(s string) string { return strconv.FormatInt(int64(len(s)), 16) + "\r\n" + s + "\r\n0\r\n\r\n" }
	big := strings.Repeat("b", MaxBody+100)
	before := map[string]string{
		"first":          "",
		"after lean":     "GET /before HTTP/1.1\r\nHost: a\r\n\r\n",
		"after chunked":  "POST /before HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + "3;ext=1\r\nabc\r\n" + chunk("0123456789abcdefX") + "",
		"after trailer":  "POST /before HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"after large":    "POST /before HTTP/1.1\r\nHost: a\r\nContent-Length: " + strconv.Itoa(len(big)) + "\r\n\r\n" + big,
		"after 1.0 body": "POST /before HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nbody",
	}
	spellings := []string{
		"Transfer-Encoding: chunked\r\n",
		"Transfer-Encoding: Chunked\r\n",
		"transfer-encoding: gzip, chunked\r\n",
		"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
		"TRANSFER-ENCODING:chunked\r\n",
	}
	for _, lean := range []bool{true, false} {
		s := startTE10Server(t, lean)
		for name, pre := range before {
			for _, te := range spellings {
				req := "POST /te HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n" + te + "\r\n" + chunk(smuggled)
				n := len(s.requests())
				codes, closed := answersUntilClose(t, s.addr, pre+req)
				want := 1
				if pre == "" {
					want = 0
				}
				got := s.requests()[n:]
				if len(codes) != want+1 || codes[want] != http.StatusBadRequest || !closed || len(got) != want {
					t.Errorf("lean %v, %s, %q: answers %v (closed %v), handler saw %q; want %d answers then 400 and the close, the handler only the requests before",
						lean, name, te, codes, closed, got, want)
				}
			}
		}
	}
}

// TestHTTP10TransferEncodingOthersPass: what the guard must leave alone
// is served as before: chunked HTTP/1.1 bodies, split across reads
// anywhere, pipelined with requests that follow; an HTTP/1.0 body of a
// known length; a field that only looks like Transfer-Encoding.
func TestHTTP10TransferEncodingOthersPass(t *testing.T) {
	raw := "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nTran\r\n1a \r\nsfer-Encoding: chunked\r\n\r\n\r\n0\r\n\r\n" +
		"POST /b HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nContent-Length: 28\r\n\r\nTransfer-Encoding: chunked\r\n" +
		"GET /c HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nX-Transfer-Encoding: chunked\r\n\r\n" +
		"GET /d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
	for _, lean := range []bool{true, false} {
		s := startTE10Server(t, lean)
		codes, closed := answersUntilClose(t, s.addr, raw)
		if len(codes) != 4 || !closed {
			t.Fatalf("lean %v: answers %v (closed %v), handler saw %q; want four", lean, codes, closed, s.requests())
		}
		for _, c := range codes {
			if c != http.StatusOK {
				t.Errorf("lean %v: answers %v, want four 200s (handler saw %q)", lean, codes, s.requests())
				break
			}
		}
	}
	// Scan alone, fed the same bytes in two reads split anywhere, spoils
	// nothing of them and ends where a head begins.
	for i := range len(raw) + 1 {
		var g TE10Guard
		b := []byte(raw)
		g.Scan(b[:i])
		g.Scan(b[i:])
		if string(b) != raw || g.state != gHead {
			t.Fatalf("split at %d: state %d, bytes changed: %v", i, g.state, string(b) != raw)
		}
	}
	// Nor anything after a switch to another protocol may follow: the
	// h2c preface, CONNECT, an upgrade (bytes that would look like an
	// HTTP/1.0 head with the field are another protocol's).
	const lookalike = "GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
	for _, head := range []string{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"} {
		var g TE10Guard
		b := []byte(head + lookalike)
		g.Scan(b)
		if string(b) != head+lookalike {
			t.Errorf("after %q: the bytes that follow were changed: %q", head, b)
		}
	}
	// And an HTTP/1.0 head with the field, split anywhere, is spoiled.
	bad := "POST /te HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	for i := range len(bad) + 1 {
		var g TE10Guard
		b := []byte(bad)
		g.Scan(b[:i])
		g.Scan(b[i:])
		if strings.Contains(string(b), "Transfer-Encoding:") || g.state != gOff {
			t.Fatalf("split at %d: %q, state %d; want the colon spoiled, the guard off", i, b, g.state)
		}
	}
}

package outbound

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/telemetry"
)

// TestFastProxyAsReverseProxy sends the same requests through the
// handler four times, forwarded by fastProxy and the fast transport, by
// the ReverseProxy and the fast transport, and by the ReverseProxy and
// http.Transport (--std-transport), behind net/http's server, and by
// fastProxy behind the lean loop, to upstreams that answer with the
// same bytes: the upstream must receive the same request, and the app the
// same answer (its Date aside), whatever the answer's framing, 1xx,
// trailers, hop-by-hop headers, or failure. Behind the lean loop, the
// upstream's fields go on as lines (SetRawHeader) in the upstream's
// order where net/http's server sorts them: those answers are compared
// as sets of header lines. Each leg sends its request twice on one
// connection, so that the second goes on a kept one.
func TestFastProxyAsReverseProxy(t *testing.T) {
	requests := map[string]string{
		"absolute": "GET http://geo:8000/a/b?x=1;y=%zz HTTP/1.1\r\nHost: geo:8000\r\nAccept: */*\r\nUser-Agent: app/1\r\n\r\n",
		"origin":   "GET /p HTTP/1.1\r\nHost: geo:8000\r\nX-Two: 1\r\nX-Two: 2\r\n\r\n",
		"hop-by-hop": "GET http://geo:8000/ HTTP/1.1\r\nHost: geo:8000\r\nConnection: keep-alive, X-Secret, forwarded\r\n" +
			"X-Secret: s\r\nKeep-Alive: timeout=5\r\nTe: trailers, deflate\r\nProxy-Authorization: Basic eA==\r\n" +
			"Proxy-Connection: keep-alive\r\nForwarded: for=192.0.2.1\r\nX-Forwarded-For: 192.0.2.1\r\nVia: 1.1 other\r\n\r\n",
		// RFC 9110 §10.1.4: a sender of TE lists it in Connection.
		"te listed": "GET http://geo:8000/ HTTP/1.1\r\nHost: geo:8000\r\nConnection: TE\r\nTe: trailers\r\n\r\n",
		"head":      "HEAD http://geo:8000/h HTTP/1.1\r\nHost: geo:8000\r\n\r\n",
		"options":   "OPTIONS http://geo:8000/o HTTP/1.1\r\nHost: geo:8000\r\nOrigin: http://a\r\n\r\n",
		"http/1.0":  "GET http://geo:8000/old HTTP/1.0\r\nHost: geo:8000\r\nConnection: keep-alive\r\n\r\n",
	}
	responses := map[string]string{
		"length":      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
		"empty":       "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"error":       "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
		"no content":  "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
		"lowercase":   "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: upstream-id\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nok",
		"chunked":     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
		"trailers":    "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 7\r\n\r\n",
		"unannounced": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Late: 1\r\n\r\n",
		"early hints": "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"early id":    "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nX-Request-Id: upstream-id\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"events":      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nContent-Length: 9\r\n\r\ndata: 1\n\n",
		"hop-by-hop":  "HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\nContent-Length: 1\r\n\r\nx",
		"to close":    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
		"http/1.0":    "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"reset":       "",
		"cut":         "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
		"request id":  "HTTP/1.1 200 OK\r\nX-Request-Id: upstream-id\r\nContent-Length: 2\r\n\r\nok",
		// The upstream closes after the head ("abc": scriptedUpstream's
		// sign to): the sidecar answers instead (answerLate).
		"no body": "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Cut: abc\r\nContent-Length: 10\r\n\r\n",
	}
	for rname, req := range requests {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(req)))
		if err != nil {
			t.Fatal(err)
		}
		if h := New(Config{}, policy.NewTable(nil, "default")); !h.fastProxied(r, &reqState{}) {
			t.Fatalf("%s: not a request for fastProxy: the comparison would prove nothing", rname)
		}
		for sname, resp := range responses {
			t.Run(rname+"/"+sname, func(t *testing.T) {
				up := newScriptedUpstream(t, resp)
				cfg := Config{Metrics: telemetry.New(0), Resolve: map[string]string{"geo:8000": up.addr}}
				h := New(cfg, policy.NewTable(nil, "default"))
				defer h.CloseIdleConnections()
				px := httptest.NewServer(h)
				defer px.Close()
				cfg.StdTransport, cfg.Metrics = true, telemetry.New(0)
				hs := New(cfg, policy.NewTable(nil, "default"))
				defer hs.CloseIdleConnections()
				pxs := httptest.NewServer(hs)
				defer pxs.Close()
				h.rpOnly.Store(true)
				rpUp, rpApp := exchangeRaw(t, px.Listener.Addr().String(), up, req)
				h.rpOnly.Store(false)
				fastUp, fastApp := exchangeRaw(t, px.Listener.Addr().String(), up, req)
				stdUp, stdApp := exchangeRaw(t, pxs.Listener.Addr().String(), up, req)
				// A handler of its own: the failures so far would have
				// opened the first one's breaker.
				hl := New(Config{Metrics: telemetry.New(0), Resolve: cfg.Resolve}, policy.NewTable(nil, "default"))
				defer hl.CloseIdleConnections()
				leanUp, leanApp := exchangeRaw(t, serveLean(t, hl), up, req)
				leanUp = strings.ReplaceAll(leanUp, hl.hop.token, h.hop.token)
				stdUp = strings.ReplaceAll(stdUp, hs.hop.token, h.hop.token)
				if !strings.Contains(resp, "Content-Type") {
					// The server sniffs a Content-Type from the first body
					// bytes unless the headers went before them: the
					// ReverseProxy flushes a stream's headers from a timer
					// of its own, which may or may not run first.
					rpApp = strings.ReplaceAll(rpApp, sniffed, "")
					fastApp = strings.ReplaceAll(fastApp, sniffed, "")
					stdApp = strings.ReplaceAll(stdApp, sniffed, "")
					leanApp = strings.ReplaceAll(leanApp, sniffed, "")
				}
				if stdUp != fastUp {
					t.Errorf("the upstream received\n%q\nfrom the fast transport and\n%q\nfrom http.Transport", fastUp, stdUp)
				}
				if stdApp != fastApp {
					t.Errorf("the app received\n%q\nthrough the fast transport and\n%q\nthrough http.Transport", fastApp, stdApp)
				}
				if rpUp != fastUp {
					t.Errorf("the upstream received\n%q\nfrom fastProxy and\n%q\nfrom the ReverseProxy", fastUp, rpUp)
				}
				if rpApp != fastApp {
					t.Errorf("the app received\n%q\nfrom fastProxy and\n%q\nfrom the ReverseProxy", fastApp, rpApp)
				}
				// Behind the lean loop, the app's lines go on in its order
				// (writeRequestLines), the ReverseProxy's sorted.
				if proxytest.SortFields(leanUp) != proxytest.SortFields(rpUp) {
					t.Errorf("the upstream received\n%q\nfrom fastProxy behind the lean loop and\n%q\nfrom the ReverseProxy", leanUp, rpUp)
				}
				for _, app := range []string{rpApp, fastApp, stdApp, leanApp} {
					if strings.Contains(app, "upstream-id") || idIn1xx(app) {
						t.Errorf("the app received the upstream's request ID: %q", app)
					}
				}
				if proxytest.SortFields(leanApp) != proxytest.SortFields(rpApp) {
					t.Errorf("the app received\n%q\nfrom fastProxy behind the lean loop and\n%q\nfrom the ReverseProxy", leanApp, rpApp)
				}
			})
		}
	}
}

// TestEventStreamFlushed: an event stream's writes reach the app as the
// upstream sends them, as the ReverseProxy flushes them, whatever the
// path: its Content-Type here starts with a Unicode space (U+00A0),
// which the ReverseProxy's test (mime.ParseMediaType) trims, and it has
// a length, so only that test makes it a stream.
func TestEventStreamFlushed(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	addr, _ := proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		if readWireHead(bufio.NewReader(c)) != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: \u00a0text/event-stream\r\nContent-Length: 18\r\n\r\ndata: 1\n\n")
		<-release
		io.WriteString(c, "data: 2\n\n")
	})
	for _, leg := range []string{"reverse proxy", "fastProxy", "fastProxy behind the lean loop"} {
		t.Run(leg, func(t *testing.T) {
			h := New(Config{Metrics: telemetry.New(0), Resolve: map[string]string{"geo:8000": addr}}, policy.NewTable(nil, "default"))
			defer h.CloseIdleConnections()
			var px string
			switch leg {
			case "reverse proxy":
				h.rpOnly.Store(true)
				fallthrough
			case "fastProxy":
				s := httptest.NewServer(h)
				defer s.Close()
				px = s.Listener.Addr().String()
			default:
				px = serveLean(t, h)
			}
			c, err := net.Dial("tcp", px)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, "GET http://geo:8000/ HTTP/1.1\r\nHost: geo:8000\r\n\r\n")
			// The second event waits for the end of the test: the first
			// must come without it.
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			var got bytes.Buffer
			buf := make([]byte, 4096)
			for !strings.Contains(got.String(), "data: 1") {
				n, err := c.Read(buf)
				got.Write(buf[:n])
				if err != nil {
					t.Fatalf("the first event did not reach the app before the second was sent: %v; got %q", err, got.String())
				}
			}
		})
	}
}

// exchangeRaw sends req on a new connection to the proxy at addr and
// returns the request the upstream got and the answer the app got, its
// Date header and request ID made constant.
func exchangeRaw(t *testing.T, addr string, up *scriptedUpstream, req string) (string, string) {
	t.Helper()
	app := exchangeTwice(t, addr, req)
	return normalize(up.got.last()), app
}

// exchangeTwice sends req twice on one connection to addr, the second
// once the first is answered, and returns what the app received,
// normalized. Each answer is over at the end of the final response's
// body, or when the proxy ends the connection (then no second).
func exchangeTwice(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var got bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &got))
	method, _, _ := strings.Cut(req, " ")
	for range 2 {
		if _, err := io.WriteString(c, req); err != nil {
			break
		}
		var err error
		for {
			var resp *http.Response
			if resp, err = http.ReadResponse(br, &http.Request{Method: method}); err != nil {
				break
			}
			if resp.StatusCode >= 200 {
				_, err = io.ReadAll(resp.Body)
				if resp.Close {
					err = io.EOF
				}
				break
			}
		}
		if err != nil {
			break
		}
	}
	return normalize(got.String())
}

// idIn1xx reports whether an informational head in the app's bytes has
// a request ID (normalize blanks their values): only the upstream's could.
func idIn1xx(app string) bool {
	for rest := app; ; {
		i := strings.Index(rest, "HTTP/1.1 1")
		if i < 0 {
			return false
		}
		head, after, _ := strings.Cut(rest[i:], "\r\n\r\n")
		if strings.Contains(head, "\nX-Request-Id:") {
			return true
		}
		rest = after
	}
}

// normalize blanks what differs between two answers to the same request:
// the Date, and the request ID the sidecar made.
func normalize(s string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(s, "\n") {
		switch {
		case strings.HasPrefix(line, "Date: "):
			line = "Date: -\r\n"
		case strings.HasPrefix(line, "X-Request-Id: "):
			line = "X-Request-Id: -\r\n"
		}
		b.WriteString(line)
	}
	return requestIDs.ReplaceAllString(b.String(), `"requestId":"-"`)
}

// scriptedUpstream answers every request with the same bytes, and
// closes the connection after them ("reset": before any).
type scriptedUpstream struct {
	addr   string
	answer string
	got    received
}

// received is the requests a test upstream received, as they came.
type received chan string

// last is the requests received since the last call.
func (r received) last() string {
	var s string
	for {
		select {
		case got := <-r:
			s += got
		default:
			return s
		}
	}
}

func newScriptedUpstream(t *testing.T, answer string) *scriptedUpstream {
	u := &scriptedUpstream{answer: answer, got: make(received, 16)}
	u.addr, _ = proxytest.RawServer(t, func(c net.Conn, _ int) { u.serve(c) })
	return u
}

func (u *scriptedUpstream) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	var head strings.Builder
	for {
		line, err := br.ReadString('\n')
		head.WriteString(line)
		if err != nil {
			return
		}
		if line == "\r\n" {
			break
		}
	}
	u.got <- head.String()
	answer := u.answer
	if strings.HasPrefix(head.String(), "HEAD ") {
		// The heads alone: the final one ends the answer.
		if i := strings.LastIndex(answer, "HTTP/1."); i >= 0 {
			answer = answer[:i+strings.Index(answer[i:], "\r\n\r\n")+4]
		}
	}
	_, _ = io.WriteString(c, answer)
	if strings.Contains(u.answer, "Content-Length") && !strings.HasPrefix(u.answer, "HTTP/1.0") && !strings.Contains(u.answer, "abc") ||
		strings.Contains(u.answer, "chunked") {
		u.serve(c) // kept for the next request
	}
	// Else the close that ends an answer without a length, or cuts one
	// short; the sidecar's next try dials anew.
}

const sniffed = "Content-Type: text/plain; charset=utf-8\r\n"

var requestIDs = regexp.MustCompile(`"requestId":"[^"]*"`)

// TestFastProxyForwardsLeanRequestItself: behind the lean loop, with the
// request's state as its context (RequestContext), fastProxy forwards
// the server's request itself, not a copy (its URL becomes the outbound
// one); behind net/http's server the handler's request is left alone.
func TestFastProxyForwardsLeanRequestItself(t *testing.T) {
	up := wireUpstream(t)
	log := telemetry.NewAccessLog(io.Discard)
	t.Cleanup(log.Close)
	h := New(Config{Metrics: telemetry.New(0), AccessLog: log, Resolve: map[string]string{"svc:80": up}},
		policy.NewTable(nil, "default"))
	for _, lean := range []bool{true, false} {
		urls := make(chan url.URL, 1)
		wrapped := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(w, r)
			urls <- *r.URL
		})
		var addr string
		if lean {
			addr = serveLean(t, wrapped)
		} else {
			srv := httptest.NewServer(wrapped)
			t.Cleanup(srv.Close)
			addr = srv.Listener.Addr().String()
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: svc\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if code, err := readWireResponse(bufio.NewReader(c)); err != nil || code != 200 {
			t.Fatalf("lean %v: %d, %v", lean, code, err)
		}
		u := <-urls
		if forwarded := u.Scheme == "http" && u.Host == "svc:80"; forwarded != lean {
			t.Errorf("lean %v: the handler's request has URL %+v afterwards; forwarded itself: %v, want %v", lean, u, forwarded, lean)
		}
		if u.Path != "/x" {
			t.Errorf("lean %v: path %q", lean, u.Path)
		}
	}
}

// TestRequestContextEmptiesPrev: a state the lean loop takes back is
// emptied (EndRequest), its response lines' room kept, and given back
// (prev) it is the same state with the new context: nothing of the last
// request's answer, try or span is left for the next.
func TestRequestContextEmptiesPrev(t *testing.T) {
	type k struct{}
	a := context.WithValue(context.Background(), k{}, "a")
	b := context.WithValue(context.Background(), k{}, "b")
	st := RequestContext(a, nil).(*reqState)
	st.id, st.code, st.attempts, st.errKind, st.upgrade, st.raw = "id", 503, 2, "timeout", true, []byte("x")
	st.url.Path = "/p"
	st.wire.lines = make([]byte, 3, 64)
	st.wire.fr.StatusCode = 503
	st.EndRequest()
	got, ok := RequestContext(b, st).(*reqState)
	if !ok || got != st {
		t.Fatalf("RequestContext(b, st) = %p, want st (%p) again", got, st)
	}
	if got.Value(k{}) != "b" {
		t.Errorf("the state's context is not the new one")
	}
	if len(got.wire.lines) != 0 || cap(got.wire.lines) != 64 {
		t.Errorf("the response lines' room: len %d cap %d, want empty and kept (64)", len(got.wire.lines), cap(got.wire.lines))
	}
	got.Context, got.wire.lines = nil, nil
	v := reflect.ValueOf(got).Elem()
	for i := range v.NumField() {
		if !v.Field(i).IsZero() {
			t.Errorf("the state given back keeps the last request's %s", v.Type().Field(i).Name)
		}
	}
	if RequestContext(a, context.Background()).(*reqState) == st {
		t.Error("a prev that is not a state was taken for one")
	}
	st.wire.lines = make([]byte, 0, maxKeptLines+1)
	st.EndRequest()
	if st.wire.lines != nil {
		t.Errorf("a state keeps %d bytes of room for lines, past maxKeptLines", cap(st.wire.lines))
	}
}

// TestLeanConnStatePerRequest: on one kept connection through the lean
// loop, whose requests share one state, a failed request's answer
// leaves nothing in the next's: its error header, its request ID.
func TestLeanConnStatePerRequest(t *testing.T) {
	up := wireUpstream(t)
	dead := refused.Addr(t)
	log := telemetry.NewAccessLog(io.Discard)
	t.Cleanup(log.Close)
	h := New(Config{Metrics: telemetry.New(0), AccessLog: log,
		Resolve: map[string]string{"svc:80": up, "dead:80": dead}}, policy.NewTable(nil, "default"))
	c, err := net.Dial("tcp", serveLean(t, h))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	ids := map[string]bool{}
	for i, host := range []string{"dead", "svc", "dead", "svc", "svc"} {
		if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		errKind := resp.Header.Get("X-Minimesh-Error")
		if (host == "dead") != (errKind != "") || (host == "dead") != (resp.StatusCode != 200) {
			t.Errorf("request %d to %s: %d, X-Minimesh-Error %q", i, host, resp.StatusCode, errKind)
		}
		id := resp.Header.Get("X-Request-ID")
		if id == "" || ids[id] {
			t.Errorf("request %d: request ID %q, want a new one", i, id)
		}
		ids[id] = true
	}
}

// TestRemoveHopByHop: every hop-by-hop field, and every field the
// Connection header names, goes (but those keep spares), on a map with
// fewer fields than hop-by-hop names and on one with more; the rest
// stays.
func TestRemoveHopByHop(t *testing.T) {
	for _, extra := range []int{0, 2, 12} {
		for _, hop := range hopHeaders {
			h := http.Header{hop: {"x"}, "Accept": {"*/*"}, "Connection": {"X-Listed, x-kept"},
				"X-Listed": {"1"}, "X-Kept": {"2"}}
			for i := range extra {
				h["X-Extra-"+strconv.Itoa(i)] = []string{"e"}
			}
			removeHopByHop(h, func(k string) bool { return k == "X-Kept" })
			for _, gone := range []string{hop, "Connection", "X-Listed"} {
				if _, ok := h[gone]; ok {
					t.Errorf("%d extra fields: %s kept", extra, gone)
				}
			}
			if len(h) != 2+extra || h.Get("Accept") != "*/*" || h.Get("X-Kept") != "2" {
				t.Errorf("%d extra fields, hop %s: left %v", extra, hop, h)
			}
		}
	}
}

// TestWithRequestID: the upstream's X-Request-Id lines go, wherever they
// are, and the request's own is the last line; other lines stay as they
// were, in order.
func TestWithRequestID(t *testing.T) {
	const id = "6f1c2b0e-1d2a-4c3b-9e8f-0a1b2c3d4e5f"
	for _, tc := range []struct{ name, in, want string }{
		{"none", "", ""},
		{"others", "A: 1\r\nB: 2\r\n", "A: 1\r\nB: 2\r\n"},
		{"first", "X-Request-Id: up\r\nA: 1\r\n", "A: 1\r\n"},
		{"middle", "A: 1\r\nX-Request-Id: up\r\nB: 2\r\n", "A: 1\r\nB: 2\r\n"},
		{"last", "A: 1\r\nX-Request-Id: up\r\n", "A: 1\r\n"},
		{"several", "X-Request-Id: a\r\nA: 1\r\nX-Request-Id: b\r\nX-Request-Id: c\r\n", "A: 1\r\n"},
		{"alike names stay", "X-Request-Ids: a\r\nX-Request-Id-B: b\r\nY-X-Request-Id: c\r\n", "X-Request-Ids: a\r\nX-Request-Id-B: b\r\nY-X-Request-Id: c\r\n"},
		{"no final line end", "A: 1\r\nX-Request-Id: up", "A: 1\r\n"},
		{"the name in a value stays", "A: X-Request-Id: v\r\nX-Request-Id: up\r\n", "A: X-Request-Id: v\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// has as readResponseHead notes it; true is always safe.
			has := strings.HasPrefix(tc.in, "X-Request-Id:") || strings.Contains(tc.in, "\nX-Request-Id:")
			for _, has := range []bool{has, true} {
				got := withRequestID([]byte(tc.in), has, id)
				if want := tc.want + "X-Request-Id: " + id + "\r\n"; string(got) != want {
					t.Errorf("withRequestID(%q, %v) = %q, want %q", tc.in, has, got, want)
				}
			}
		})
	}
}

package leanhttp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/field"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/wellknown"
	"golang.org/x/net/http/httpguts"
)

// The handlers of the differential tests: each answers deterministically
// from the request, so that the lean loop and net/http's server, given
// the same bytes, must write the same bytes back (Date aside).
var handlers = map[string]http.HandlerFunc{
	"plain": func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") },
	"echo-body": func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%d %q %v", r.ContentLength, b, err)
	},
	"set-length": func(w http.ResponseWriter, r *http.Request) {
		r.ContentLength = 5 // a middleware's doing: the loop's own state decides
		io.WriteString(w, "ok")
	},
	"write-then-read": func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first ")
		w.(http.Flusher).Flush()
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%q %v", b, err)
	},
	"close-then-read": func(w http.ResponseWriter, r *http.Request) {
		cerr := r.Body.Close()
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%v %q %v", cerr, b, err)
	},
	"half-body": func(w http.ResponseWriter, r *http.Request) {
		b := make([]byte, 2)
		n, err := io.ReadFull(r.Body, b)
		fmt.Fprintf(w, "%q %v", b[:n], err)
	},
	"html": func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html><body>hi</body></html>") },
	"length": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "{}")
	},
	"big": func(w http.ResponseWriter, r *http.Request) { w.Write(bytes.Repeat([]byte("x"), 5000)) },
	"sizes": func(w http.ResponseWriter, r *http.Request) {
		for _, n := range []int{10, 2030, 9, 4096, 1, 3000} {
			w.Write(bytes.Repeat([]byte("y"), n))
		}
	},
	"flush": func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		io.WriteString(w, "data: 2\n\n")
		http.NewResponseController(w).Flush()
	},
	"flush-empty": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Early", "1")
		w.(http.Flusher).Flush()
	},
	"204": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		w.Header().Set("Transfer-Encoding", "chunked")
		w.WriteHeader(204)
		_, err := io.WriteString(w, "nope!")
		w.Header().Set("X-Err", fmt.Sprint(err))
	},
	"304": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Etag", `"x"`)
		w.WriteHeader(304)
	},
	"trailers": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum, Content-Length")
		w.WriteHeader(200)
		io.WriteString(w, "body")
		w.Header().Set("X-Sum", "42")
		w.Header().Set(http.TrailerPrefix+"X-Late", "late")
	},
	"early-hints": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.Header().Set("Content-Length", "9")
		w.WriteHeader(103)
		w.WriteHeader(200)
		io.WriteString(w, "after 103")
	},
	"close": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	},
	"keep-alive": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "keep-alive")
		w.Header().Set("Content-Length", "3")
		io.WriteString(w, "k-a")
	},
	"bad-length": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "abc")
		io.WriteString(w, "x")
	},
	"short": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "12345")
	},
	"long": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "3")
		_, err := io.WriteString(w, "12345")
		w.Header().Set("X-Err", fmt.Sprint(err)) // not sent: after WriteHeader
	},
	"identity": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Transfer-Encoding", "identity")
		io.WriteString(w, "until close")
	},
	"te-and-length": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Transfer-Encoding", "chunked")
		w.Header().Set("Content-Length", "4")
		io.WriteString(w, "four")
	},
	"encoded": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		io.WriteString(w, "\x1f\x8b")
	},
	"status": func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(599)
		io.WriteString(w, "odd")
	},
	"abort": func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "partial")
		panic(http.ErrAbortHandler)
	},
	"abort-flushed": func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte("z"), 9000))
		panic(http.ErrAbortHandler)
	},
	"superfluous": func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(202)
		w.WriteHeader(203)
	},
	"header-after": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("A", "1")
		w.WriteHeader(200)
		w.Header().Set("B", "2")
		io.WriteString(w, "ab")
	},
	"no-header-call": func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(201)
	},
	// SetHeader's: the same bytes as net/http's server, which gets the
	// fields copied into its own header (setHeader).
	"set-header": func(w http.ResponseWriter, r *http.Request) {
		setHeader(w, http.Header{"Content-Type": {"text/plain"}, "Content-Length": {"5"}, "X-A": {"1", "2"}})
		w.Header().Set("X-Request-Id", "r") // after SetHeader, before WriteHeader: sent
		w.WriteHeader(200)
		io.WriteString(w, "hello")
	},
	"set-header-sniffed": func(w http.ResponseWriter, r *http.Request) {
		setHeader(w, http.Header{})
		io.WriteString(w, "<html><body>hi</body></html>")
	},
	"set-header-chunked": func(w http.ResponseWriter, r *http.Request) {
		setHeader(w, http.Header{"X-A": {"1"}, "Connection": {"close"}})
		w.WriteHeader(200)
		w.Write(bytes.Repeat([]byte("c"), 5000))
	},
	"set-header-trailers": func(w http.ResponseWriter, r *http.Request) {
		setHeader(w, http.Header{"Trailer": {"X-Sum"}, "Content-Type": {"text/plain"}})
		w.WriteHeader(200)
		io.WriteString(w, "body")
		w.(http.Flusher).Flush() // the header out: then the trailers
		w.Header().Set("X-Sum", "42")
		w.Header().Set(http.TrailerPrefix+"X-Late", "late")
	},
	"set-header-304": func(w http.ResponseWriter, r *http.Request) {
		setHeader(w, http.Header{"Content-Type": {"text/plain"}, "Content-Length": {"7"}, "Etag": {`"x"`}})
		w.WriteHeader(304)
	},
	"set-header-204": func(w http.ResponseWriter, r *http.Request) {
		setHeader(w, http.Header{"Content-Length": {"5"}, "Transfer-Encoding": {"chunked"}})
		w.WriteHeader(204)
		io.WriteString(w, "nope!")
	},
	"set-header-refused": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-First", "1") // a field already: SetHeader declines
		setHeader(w, http.Header{"X-A": {"1"}})
		io.WriteString(w, "copied")
	},
	"set-header-late": func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		setHeader(w, http.Header{"X-A": {"1"}}) // after WriteHeader: declined, not sent
		io.WriteString(w, "late")
	},
	// SetRawHeader's: net/http's server gets the lines as fields of its
	// header (rawHeader); the fields' order is the lines' then, so these
	// handlers' answers are compared as sets of header lines (same).
	"raw": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "Content-Type: text/plain\r\nX-Request-Id: up\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\nX-Empty: \r\nX-Tab: a\tb\r\n")
		w.Header().Set("X-Request-Id", "r") // replaces the line
		w.WriteHeader(200)
		io.WriteString(w, "hello")
	},
	"raw-sniffed": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "X-B: 1\r\nContent-Encoding: \r\n") // an empty encoding: sniffed still
		io.WriteString(w, "<html><body>hi</body></html>")
	},
	"raw-encoded": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "Content-Encoding: gzip\r\nContent-Encoding: \r\n")
		io.WriteString(w, "\x1f\x8b")
	},
	"raw-date": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Type: text/plain\r\n")
		io.WriteString(w, "dated")
	},
	"raw-304": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "Content-Type: text/plain\r\nContent-Length: 7\r\nEtag: \"x\"\r\n")
		w.WriteHeader(304)
	},
	"raw-204": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "Content-Length: 5\r\nX-A: 1\r\n")
		w.WriteHeader(204)
		io.WriteString(w, "nope!")
	},
	"raw-chunked": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "X-A: 1\r\n")
		w.Header().Set("Connection", "close")
		w.Write(bytes.Repeat([]byte("c"), 5000))
	},
	"raw-flushed": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "Content-Type: text/event-stream\r\n")
		io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		io.WriteString(w, "data: 2\n\n")
	},
	"raw-long": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "Content-Length: 3\r\n")
		_, err := io.WriteString(w, "12345")
		w.Header().Set("X-Err", fmt.Sprint(err)) // not sent: after WriteHeader
	},
	"raw-short": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "Content-Length: 10\r\nContent-Type: text/plain\r\n")
		io.WriteString(w, "12345")
	},
	"raw-map-length": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "Content-Length: 10\r\nContent-Type: text/plain\r\n")
		w.Header().Set("Content-Length", "2") // replaces the line
		io.WriteString(w, "ok")
	},
	"raw-map-type": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close") // before: kept
		rawHeader(w, "Content-Type: text/plain\r\nContent-Length: 4\r\n")
		w.Header()["Content-Type"] = nil // replaces the line: none sent, none sniffed
		io.WriteString(w, "<p/>")
	},
	"raw-refused": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "Connection: keep-alive\r\nContent-Length: 6\r\n") // declined: copied
		io.WriteString(w, "copied")
	},
	"raw-dropped": func(w http.ResponseWriter, r *http.Request) {
		if s, ok := w.(rawSetter); ok {
			s.SetRawHeader([]byte("Content-Length: 9\r\nX-Gone: 1\r\n"))
			s.SetRawHeader(nil)
		}
		w.Header().Set("X-Kept", "1")
		io.WriteString(w, "replaced")
	},
	"raw-late": func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		if s, ok := w.(rawSetter); ok && s.SetRawHeader([]byte("X-A: 1\r\n")) {
			panic("SetRawHeader after WriteHeader")
		}
		io.WriteString(w, "late")
	},
	"raw-after-1xx": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(103)
		delete(w.Header(), "Link")
		rawHeader(w, "Content-Length: 9\r\n")
		w.WriteHeader(200)
		io.WriteString(w, "after 103")
	},
	"raw-bad-map-length": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "Content-Length: 10\r\nContent-Type: text/plain\r\n")
		w.Header().Set("Content-Length", "abc") // replaces the line; invalid: no length
		io.WriteString(w, "hello")
	},
	"raw-before-1xx": func(w http.ResponseWriter, r *http.Request) {
		rawHeader(w, "Link: </a.css>; rel=preload\r\nContent-Length: 1\r\n") // sent with the 103 too
		w.WriteHeader(103)
		w.WriteHeader(200)
		io.WriteString(w, "x")
	},
	"set-header-bad-length": func(w http.ResponseWriter, r *http.Request) {
		setHeader(w, http.Header{"Content-Length": {"abc"}})
		io.WriteString(w, "hello")
	},
	"echo": func(w http.ResponseWriter, r *http.Request) {
		_, isServer := r.Context().Value(http.ServerContextKey).(*http.Server)
		_, isLocal := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		fmt.Fprintf(w, "%s %q %q %s host=%q close=%v cl=%d te=%v body=%v hdr=%v trailer=%v server=%v local=%v remote=%v",
			r.Method, r.RequestURI, r.URL.String(), r.Proto, r.Host, r.Close, r.ContentLength, r.TransferEncoding,
			r.Body == http.NoBody, r.Header, r.Trailer, isServer, isLocal, r.RemoteAddr != "")
		w.Header().Set("Content-Type", "text/plain") // too late: sniffed
	},
}

// setHeader answers with h as the header: SetHeader on the lean loop, a
// copy of every field on net/http's server (a proxy's fastProxy does the
// same).
func setHeader(w http.ResponseWriter, h http.Header) {
	if s, ok := w.(interface{ SetHeader(http.Header) bool }); ok && s.SetHeader(h) {
		setHeaderTaken.Add(1)
		return
	}
	for k, vv := range h {
		w.Header()[k] = vv
	}
}

var setHeaderTaken atomic.Int32

type rawSetter interface{ SetRawHeader([]byte) bool }

// rawHeader adds lines to the header: SetRawHeader on the lean loop, each
// line a field added to the header's map on net/http's server or where
// SetRawHeader declines them.
func rawHeader(w http.ResponseWriter, lines string) {
	if s, ok := w.(rawSetter); ok && s.SetRawHeader([]byte(lines)) {
		rawHeaderTaken.Add(1)
		return
	}
	for _, line := range strings.SplitAfter(lines, "\r\n") {
		if k, v, ok := strings.Cut(strings.TrimSuffix(line, "\r\n"), ": "); ok {
			w.Header().Add(k, v)
		}
	}
}

var rawHeaderTaken atomic.Int32

// TestRawHeaderTaken: the lean loop takes the raw handlers' lines (the
// differential test tests that path, not the copy) but those it must
// decline.
func TestRawHeaderTaken(t *testing.T) {
	for name := range handlers {
		if !strings.HasPrefix(name, "raw") || name == "raw-dropped" || name == "raw-late" {
			continue
		}
		p := startPair(t, handlers[name])
		before := rawHeaderTaken.Load()
		exchange(t, p.lean, []byte("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
		if got, want := rawHeaderTaken.Load() > before, name != "raw-refused"; got != want {
			t.Errorf("%s: SetRawHeader took the lines: %v, want %v", name, got, want)
		}
	}
}

// TestSetRawHeaderForm: the lines SetRawHeader takes, and those it
// declines.
func TestSetRawHeaderForm(t *testing.T) {
	for _, c := range []struct {
		lines string
		ok    bool
	}{
		{"", true},
		{"X-A: 1\r\n", true},
		{"X-A: \r\n", true},
		{"X-A: a b\tc\r\nX-A: 2\r\nContent-Length: 0\r\n", true},
		{"Www-Authenticate: x\r\nX-123: y\r\nA_b: z\r\n", true},
		{"Content-Encoding: gzip\r\nDate: x\r\nContent-Type: y\r\n", true},
		{"X-A: 1", false},
		{"X-A: 1\n", false},
		{"X-A: 1\r\nX-B: 2", false},
		{"X-A:1\r\n", false},
		{"X-A:\r\n", false},
		{"X-A:  1\r\n", false},
		{"X-A: 1 \r\n", false},
		{"X-A: \t1\r\n", false},
		{"X-A: 1\x00\r\n", false},
		{"X-A: 1\x7f\r\n", false},
		{"X-A: 1\r2\r\n", false},
		{"x-a: 1\r\n", false},
		{"X-a: 1\r\n", false},
		{"XA: 1\r\n", false},
		{"X A: 1\r\n", false},
		{": 1\r\n", false},
		{"X-A : 1\r\n", false},
		{" X-A: 1\r\n", false},
		{"Connection: close\r\n", false},
		{"Transfer-Encoding: chunked\r\n", false},
		{"Trailer: X\r\n", false},
		{"Upgrade: h2c\r\n", false},
		{"Content-Length: 1\r\nContent-Length: 1\r\n", false},
		{"Content-Length: -1\r\n", false},
		{"Content-Length: 1x\r\n", false},
		{"Content-Length: 1234567890123456789\r\n", false},
		{"Content-Length: \r\n", false},
	} {
		w := &response{}
		if got := w.SetRawHeader([]byte(c.lines)); got != c.ok {
			t.Errorf("SetRawHeader(%q) = %v, want %v", c.lines, got, c.ok)
		}
	}
}

// TestSetHeaderTaken: the lean loop takes a header from SetHeader (and
// TestSameAsNetHTTP's set-header handlers test that path, not the copy),
// but not once the response has fields or a status.
func TestSetHeaderTaken(t *testing.T) {
	for _, tc := range []struct {
		handler string
		taken   bool
	}{{"set-header", true}, {"set-header-trailers", true}, {"set-header-refused", false}, {"set-header-late", false}} {
		p := startPair(t, handlers[tc.handler])
		before := setHeaderTaken.Load()
		exchange(t, p.lean, []byte("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
		if got := setHeaderTaken.Load() > before; got != tc.taken {
			t.Errorf("%s: SetHeader took the header: %v, want %v", tc.handler, got, tc.taken)
		}
	}
}

// pair is the same handler behind a standard server and behind a lean
// loop in front of another standard server with the same settings.
type pair struct {
	std, lean string
	leanSrv   *Server
	logs      [2]*lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newServer(h http.Handler, logs io.Writer) *http.Server {
	return &http.Server{
		Handler:           h,
		MaxHeaderBytes:    64 << 10,
		ReadHeaderTimeout: 2 * time.Second,
		IdleTimeout:       2 * time.Second,
		ErrorLog:          log.New(logs, "", 0),
	}
}

func startPair(t testing.TB, h http.Handler) *pair {
	t.Helper()
	p := &pair{logs: [2]*lockedBuffer{{}, {}}}
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	std := newServer(h, p.logs[0])
	go std.Serve(sln)
	lln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.leanSrv = New(newServer(h, p.logs[1]))
	go p.leanSrv.ServeStd()
	go p.leanSrv.Serve(lln)
	p.std, p.lean = sln.Addr().String(), lln.Addr().String()
	t.Cleanup(func() {
		std.Close()
		p.leanSrv.Close()
	})
	return p
}

// exchange writes raw on a new connection, half-closes it, and returns
// all that comes back until the server closes (or 3 s).
func exchange(t testing.TB, addr string, raw []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write(raw); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(c)
	return got
}

var dateRE = regexp.MustCompile(`(?m)^Date: [^\r]*\r$`)
var panicRE = regexp.MustCompile(`(?s)panic serving [^:]*:[0-9]+: (.*?)\n.*`)
var callerRE = regexp.MustCompile(`call from \S+ \(\S+:[0-9]+\)`)

func normalize(b []byte) string { return dateRE.ReplaceAllString(string(b), "Date: X\r") }

func normalizeLog(s string) string {
	s = panicRE.ReplaceAllString(s, "panic serving: $1")
	return callerRE.ReplaceAllString(s, "call from X")
}

// same sends raw to both servers and fails unless their answers and
// error logs match.
func (p *pair) same(t *testing.T, name string, raw []byte) {
	t.Helper()
	std := normalize(exchange(t, p.std, raw))
	lean := normalize(exchange(t, p.lean, raw))
	if strings.HasPrefix(name, "raw") {
		std, lean = proxytest.SortFields(std), proxytest.SortFields(lean)
	}
	if std != lean {
		t.Errorf("%s: %q\nstd:  %q\nlean: %q", name, raw, std, lean)
	}
}

var requests = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /x?y=1 HTTP/1.1\r\nHost: a:80\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
	"GET http://a/b HTTP/1.1\r\nHost: c\r\n\r\n",
	"GET HTTP://A:81/b HTTP/1.1\r\nHost: c\r\n\r\n",
	"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
	"OPTIONS / HTTP/1.1\r\nHost: a\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
	"DELETE /d HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n",
	"GET / HTTP/1.0\r\n\r\n",
	"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
	"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", // pipelined
	"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
	"PUT /e HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"a\": 1}\n",
	"PATCH /e HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
	"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc", // cut short
	"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 16384\r\n\r\n" + strings.Repeat("p", 16384),
	"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 16385\r\n\r\n" + strings.Repeat("p", 16385),
	"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nExpect: nothing\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
	"CONNECT a:80 HTTP/1.1\r\nHost: a:80\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	"GET / HTTP/1.1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
	"GET / HTTP/1.1\nHost: a\n\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\n",
	"GET / HTTP/1.1\r\nHost: a",
	"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
	"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
	"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n",
	"get / HTTP/1.1\r\nHost: a\r\n\r\n",
	"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + strings.Repeat("l", 5000) + "\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX-Huge: " + strings.Repeat("h", 70<<10) + "\r\n\r\n",
	"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
	"",
}

// TestSameAsNetHTTP: for every handler and every request above, the
// lean loop answers byte for byte as net/http's server (Date aside), and
// logs the same.
func TestSameAsNetHTTP(t *testing.T) {
	for name, h := range handlers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := startPair(t, h)
			for _, raw := range requests {
				p.same(t, name, []byte(raw))
			}
			// Logs are written as the handlers run; the servers close
			// their connections after that.
			if std, lean := normalizeLog(p.logs[0].String()), normalizeLog(p.logs[1].String()); std != lean {
				t.Errorf("error logs differ:\nstd:  %q\nlean: %q", std, lean)
			}
		})
	}
}

// FuzzSameAsNetHTTP: whatever the bytes, the lean loop answers as
// net/http's server does, for a handler chosen by the input.
func FuzzSameAsNetHTTP(f *testing.F) {
	names := make([]string, 0, len(handlers))
	for n := range handlers {
		names = append(names, n)
	}
	for i, r := range requests {
		f.Add([]byte(r), uint8(i))
	}
	sort.Strings(names)
	pairs := map[string]*pair{}
	for _, n := range names {
		pairs[n] = startPair(f, handlers[n])
	}
	f.Fuzz(func(t *testing.T, raw []byte, which uint8) {
		if len(raw) > 8<<10 {
			return
		}
		name := names[int(which)%len(names)]
		pairs[name].same(t, name, raw)
	})
}

// TestScanHead: what the loop serves itself, and what it hands off.
func TestScanHead(t *testing.T) {
	for _, c := range []struct {
		in   string
		want verdict
		n    int
		body int
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", serveLean, 27, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET", serveLean, 27, 0}, // the caller sees the rest
		{"HEAD http://a/ HTTP/1.0\r\n\r\n", serveLean, 27, 0},
		{"DELETE /x HTTP/1.1\r\nhOsT: a\r\ncontent-length:  0 \r\n\r\n", serveLean, 52, 0},
		{"OPTIONS /x HTTP/1.1\r\nHost: a\r\nX: \t\x80\xff\r\n\r\n", serveLean, 40, 0},
		{"", needMore, 0, 0},
		{"G", needMore, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\n", needMore, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r", needMore, 0, 0},
		{"X", handOff, 0, 0},
		{"POST / HTTP/1.1\r\nHost: a\r\n\r\n", serveLean, 28, 0},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", serveLean, 47, 3},
		{"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length:  16384 \r\n\r\n", serveLean, 52, 16384},
		{"PATCH / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", serveLean, 48, 0},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 16385\r\n\r\n", handOff, 0, 0},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", handOff, 0, 0},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 07\r\n\r\n", handOff, 0, 0},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +7\r\n\r\n", handOff, 0, 0},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7, 7\r\n\r\n", handOff, 0, 0},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", handOff, 0, 0},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", handOff, 0, 0},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", handOff, 0, 0},
		{"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", handOff, 0, 0},
		{"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n", handOff, 0, 0},
		{"PRI * HTTP/2.0\r\n", handOff, 0, 0},
		{"GET * HTTP/1.1\r\nHost: a\r\n\r\n", handOff, 0, 0},
		{"GET a:1 HTTP/1.1\r\nHost: a\r\n\r\n", handOff, 0, 0},
		{"GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n", handOff, 0, 0},
		{"GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", handOff, 0, 0},
		{"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\nHost: a\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: y\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n", serveLean, 46, 1},
		{"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\n: y\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n", handOff, 0, 0},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: \x7f\r\n\r\n", handOff, 0, 0},
		{"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", handOff, 0, 0},
	} {
		n, body, v := scanHead([]byte(c.in))
		if v != c.want || (v == serveLean && (n != c.n || body != c.body)) {
			t.Errorf("scanHead(%q) = %d, %d, %v; want %d, %d, %v", c.in, n, body, v, c.n, c.body, c.want)
		}
	}
}

// FuzzScanHead: whatever the scan serves itself and net/http parses is
// one request head of the common case, of exactly the scanned length,
// with the body length net/http reads,
// that its server would accept; newRequest builds the same request.
func FuzzScanHead(f *testing.F) {
	for _, r := range requests {
		f.Add([]byte(r))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, _, v := scanHead(b)
		if v != serveLean {
			return
		}
		sameRequest(t, b, n)
	})
}

// TestNewRequest: the request built from a scanned head is the one
// net/http's server would hand its handler, for heads that exercise each
// of its rules.
func TestNewRequest(t *testing.T) {
	heads := []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /x/%41?q=%zz&r=1 HTTP/1.1\r\nHost: a:80\r\nX-A: 1\r\nx-a: 2\r\nX-B:\r\nX-C: \t v \t\r\n\r\n",
		"GET http://b:81/p?q HTTP/1.1\r\nHost: c\r\n\r\n",
		"GET HTTP://B/ HTTP/1.1\r\nHost: c\r\n\r\n",
		"GET http://user@b/ HTTP/1.1\r\nHost: c\r\n\r\n",
		"GET http:/// HTTP/1.1\r\nHost: c\r\n\r\n",
		"GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET //a/b HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
		"HEAD / HTTP/1.0\r\n\r\n",
		"HEAD / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
		"HEAD / HTTP/1.0\r\nConnection: keep-alive, close\r\nHost: h\r\n\r\n",
		"OPTIONS / HTTP/1.1\r\nHost: a\r\nConnection: foo\r\nConnection: CLOSE\r\n\r\n",
		"DELETE /d HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\nCache-Control: max-age=1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nPragma: x\r\nPragma: no-cache\r\n\r\n",
		"GET / HTTP/1.1\r\nhost: a\r\nuser-agent: u\r\nX-REQUEST-ID: r\r\nx_y.z~1: v\r\nTrailer: X\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [::1]:80\r\nX: \x80\xff\r\n\r\n",
		// Lines as a header map writes them back, and near misses.
		"GET / HTTP/1.1\r\nUser-Agent: u\r\nHost: a\r\nConnection: keep-alive, X-A\r\nTe: trailers\r\nX-A: 1\r\nX-Empty: \r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-A:  1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-A:1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-A:\t1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-A:1 \r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1 \r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-b: 2\r\n\r\n",
		"GET / HTTP/1.1\r\nhost: a\r\nX-A: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost:a\r\nTE: trailers\r\n\r\n",
		"GET / HTTP/1.1\r\nVia: 1.0 a\r\nHost: a\r\nvia: 1.1 b\r\nX: y\r\n\r\n",
		"GET / HTTP/1.1\r\nVia: 1.0 a\r\nHost: a\r\nVia: 1.1 b\r\nX: y\r\n\r\n",
	}
	for _, h := range heads {
		n, _, v := scanHead([]byte(h))
		if v != serveLean {
			t.Fatalf("scanHead(%q) = %v: the test wants heads the loop serves", h, v)
		}
		sameRequest(t, []byte(h), n)
	}
}

// TestNewRequestTargets: every printable byte in each part of a target,
// origin-form and absolute-form, gives the URL net/url makes of it,
// whether plainTarget or net/url builds it.
func TestNewRequestTargets(t *testing.T) {
	for _, target := range []string{"http://a", "http://a/", "http://a:", "http://a:80", "http://a:80/b?c", "http://:80/",
		"http://1.2.3.4:5/", "http:///", "http://a/?", "/?", "http://a:8a/", "http://a:80:90/", "HTTP://a/", "http:/a"} {
		h := "GET " + target + " HTTP/1.1\r\nHost: a\r\n\r\n"
		if n, _, v := scanHead([]byte(h)); v == serveLean {
			sameRequest(t, []byte(h), n)
		}
	}
	for c := byte(0x21); c < 0x7f; c++ {
		b := string(c)
		for _, target := range []string{"/a" + b + "b", "/a?b" + b + "c", "/" + b, "/a?" + b,
			"http://a" + b + "b/", "http://" + b + "/", "http://a" + b, "http://a:8" + b + "/", "http://a/" + b, "http://a/b?" + b} {
			h := "GET " + target + " HTTP/1.1\r\nHost: a\r\n\r\n"
			if n, _, v := scanHead([]byte(h)); v == serveLean {
				sameRequest(t, []byte(h), n)
			}
		}
	}
}

// sameRequest fails unless newRequest, given the scanned head b[:n],
// builds the request net/http's server would hand its handler, or
// declines exactly when that server would not serve it as one.
func sameRequest(t *testing.T, b []byte, n int) {
	t.Helper()
	br := bufio.NewReaderSize(bytes.NewReader(b), len(b)+16)
	want, err := http.ReadRequest(br)
	// The scratch as a connection lends it after another request, one
	// that filled every part of it.
	var sc reqScratch
	var got http.Request
	if !newRequest([]byte(dirtyHead), &sc, &got) {
		t.Fatalf("newRequest(%q) declined", dirtyHead)
	}
	sc.reset()
	got = http.Request{} // as conn.begin empties it
	ok := newRequest(b[:n], &sc, &got)
	if _, body, _ := scanHead(b); ok && body > 0 {
		got.Body, got.ContentLength = &reqBody{}, int64(body) // as the loop sets them
	}
	if err != nil {
		// A target net/url refuses ("/%zz"): the loop hands the head to
		// net/http, whose 400 it is.
		if ok {
			t.Fatalf("newRequest(%q) served what http.ReadRequest refuses: %v", b[:n], err)
		}
		return
	}
	if consumed := len(b) - br.Buffered(); consumed != n {
		t.Fatalf("scan: %d bytes, net/http read %d of %q", n, consumed, b)
	}
	if !serverAccepts(want) {
		t.Fatalf("scan serves %q, which net/http's server refuses: %+v", b[:n], want)
	}
	if !ok {
		t.Fatalf("newRequest(%q) declined what net/http serves: %+v", b[:n], want)
	}
	type fields struct {
		Method, Proto, Host, RequestURI, URL string
		URLParts                             url.URL
		ProtoMajor, ProtoMinor               int
		Header, Trailer                      http.Header
		NoBody, Close                        bool
		ContentLength                        int64
		TransferEncoding                     []string
	}
	of := func(r *http.Request) fields {
		return fields{r.Method, r.Proto, r.Host, r.RequestURI, r.URL.String(), *r.URL, r.ProtoMajor, r.ProtoMinor,
			r.Header, r.Trailer, r.Body == http.NoBody, r.Close, r.ContentLength, r.TransferEncoding}
	}
	if g, w := of(&got), of(want); !reflect.DeepEqual(g, w) {
		t.Fatalf("newRequest(%q):\n got  %+v\n want %+v", b[:n], g, w)
	}
	sameLines(t, b[:n], &sc, want)
}

// sameLines fails unless the scratch's request lines are what
// RequestLines promises of the head: given exactly when each field line
// is "Name: value" as http.Header.Write writes it back and the header
// map has no field the lines lack, and then the head's field lines
// themselves, whose fields are the map's (and the Host), and whose
// Connection, Te, Upgrade and X-Request-Id notes say whether the map
// has those fields.
func sameLines(t *testing.T, head []byte, sc *reqScratch, want *http.Request) {
	t.Helper()
	s := string(head)
	start := strings.Index(s, "\r\n") + 2
	text := s[start : len(s)-2]
	wantLined := true
	mapped := http.Header{}
	viaEnd, at := 0, 0
	var canonical strings.Builder // the lines with every name as the map spells it
	for _, line := range strings.SplitAfter(text, "\r\n") {
		if line == "" {
			continue
		}
		at += len(line)
		if strings.EqualFold(line[:strings.IndexByte(line, ':')], "Via") {
			viaEnd = at
		}
		name, value, _ := strings.Cut(strings.TrimSuffix(line, "\r\n"), ":")
		key := textproto.CanonicalMIMEHeaderKey(name)
		canonical.WriteString(key + ":" + value + "\r\n")
		v := strings.Trim(value, " \t")
		if value != " "+v {
			wantLined = false
		}
		if key != "Host" {
			mapped[key] = append(mapped[key], v)
		}
	}
	if !reflect.DeepEqual(mapped, want.Header) {
		wantLined = false // the map has more (a Pragma's Cache-Control)
	}
	if sc.lined != wantLined {
		t.Fatalf("newRequest(%q): lined %v, want %v", head, sc.lined, wantLined)
	}
	_, conn := want.Header["Connection"]
	_, te := want.Header["Te"]
	_, upgrade := want.Header["Upgrade"]
	_, id := want.Header[textproto.CanonicalMIMEHeaderKey(wellknown.HeaderRequestID)]
	if sc.lines.ViaEnd != viaEnd {
		t.Fatalf("newRequest(%q): the last Via line ends at %d, noted %d", head, viaEnd, sc.lines.ViaEnd)
	}
	if sc.lines.Connection != conn || sc.lines.Te != te {
		t.Fatalf("newRequest(%q): notes Connection %v, Te %v; the map has them: %v, %v", head, sc.lines.Connection, sc.lines.Te, conn, te)
	}
	if sc.lines.Upgrade != upgrade || sc.lines.RequestID != id {
		t.Fatalf("newRequest(%q): notes Upgrade %v, X-Request-Id %v; the map has them: %v, %v", head, sc.lines.Upgrade, sc.lines.RequestID, upgrade, id)
	}
	if sc.lined && sc.lines.Text != canonical.String() {
		t.Fatalf("newRequest(%q): lines %q, want %q", head, sc.lines.Text, canonical.String())
	}
}

// dirtyHead fills every part of a connection's scratch: a query, more
// fields than most heads, a repeated one, a Pragma's Cache-Control.
const dirtyHead = "GET /d/e?f=g HTTP/1.1\r\nHost: d\r\nA: 1\r\nB: 2\r\nC: 3\r\nA: 4\r\nD: 5\r\nE: 6\r\n" +
	"F: 7\r\nG: 8\r\nH: 9\r\nI: 10\r\nPragma: no-cache\r\n\r\n"

// TestScratchReset: what a request leaves in its connection's scratch is
// gone once its response ends, so that an idle connection holds none of
// its strings alive.
func TestScratchReset(t *testing.T) {
	var sc reqScratch
	var r http.Request
	ok := newRequest([]byte(dirtyHead), &sc, &r)
	if !ok || len(r.Header) != 11 || r.URL.RawQuery != "f=g" {
		t.Fatalf("newRequest(%q) = %v, %+v", dirtyHead, ok, r)
	}
	sc.reset()
	if len(sc.hdr) != 0 || sc.url != (url.URL{}) {
		t.Fatalf("after reset: header %v, URL %+v", sc.hdr, sc.url)
	}
	for i, v := range sc.values {
		if v != "" {
			t.Fatalf("after reset: values[%d] = %q", i, v)
		}
	}
}

// serverAccepts is what net/http's server checks of a request it read
// before its handler sees it, and what the loop serves: HTTP/1.x, no
// body or one of a known length up to MaxBody, http or no scheme, valid header names and values (the Host
// rules are in TestSameAsNetHTTP: ReadRequest removes the field).
func serverAccepts(req *http.Request) bool {
	if req.ProtoMajor != 1 || (req.ProtoMinor != 0 && req.ProtoMinor != 1) ||
		req.ContentLength < 0 || req.ContentLength > MaxBody || len(req.TransferEncoding) != 0 ||
		req.URL == nil || (req.URL.Scheme != "" && req.URL.Scheme != "http") {
		return false
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// TestClientGoneCancels: a request waiting on its upstream is cancelled
// when its client goes away, within WatchAfter and a little; one that
// is quick never starts the watch's read.
func TestClientGoneCancels(t *testing.T) {
	cancelled := make(chan time.Duration, 1)
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		select {
		case <-r.Context().Done():
			cancelled <- time.Since(start)
		case <-time.After(5 * time.Second):
			cancelled <- -1
		}
	}))
	for _, after := range []time.Duration{10 * time.Millisecond, 300 * time.Millisecond} {
		c, err := net.Dial("tcp", p.lean)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		time.Sleep(after)
		c.Close()
		got := <-cancelled
		if got < 0 || got > after+DefaultWatchAfter+time.Second {
			t.Errorf("client gone after %v: request cancelled after %v, want within %v", after, got, DefaultWatchAfter)
		}
	}
}

// TestAfterCancel: a function registered with AfterCancel runs once the
// request's context ends (its client gone), with the context's Err set,
// as context.AfterFunc's would; its stop, called first, keeps it from
// running; a second registration, and one after the end, are
// context.AfterFunc's and run too.
func TestAfterCancel(t *testing.T) {
	type result struct {
		name string
		err  error // the request context's Err when f ran
	}
	ran := make(chan result, 8)
	stopped := make(chan bool, 1)
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ac, ok := w.(interface{ AfterCancel(func()) func() bool })
		if !ok {
			return // net/http's server: not this test's
		}
		on := func(name string) func() { return func() { ran <- result{name, r.Context().Err()} } }
		stopped <- ac.AfterCancel(on("stopped"))()
		ac.AfterCancel(on("first"))
		ac.AfterCancel(on("second")) // a second at once: context.AfterFunc's
		<-r.Context().Done()
		ac.AfterCancel(on("late")) // after the end: at once
	}))
	c, err := net.Dial("tcp", p.lean)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if !<-stopped {
		t.Error("stop before the end reported false, want true: it unregistered the function")
	}
	c.Close()
	got := map[string]error{}
	for len(got) < 3 {
		select {
		case r := <-ran:
			if r.name == "stopped" {
				t.Fatal("the stopped function ran")
			}
			got[r.name] = r.err
		case <-time.After(DefaultWatchAfter + 3*time.Second):
			t.Fatalf("ran %v, want first, second and late", got)
		}
	}
	for name, err := range got {
		if err == nil {
			t.Errorf("%s ran before the context's Err was set", name)
		}
	}
}

// TestStreamCancelled: a response streaming when the client goes away
// ends too.
func TestStreamCancelled(t *testing.T) {
	done := make(chan error, 1)
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			done <- nil
		case <-time.After(5 * time.Second):
			done <- errors.New("not cancelled in 5s")
		}
	}))
	c, err := net.Dial("tcp", p.lean)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	if line != "first\n" {
		t.Fatalf("first line %q", line)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestKeepAliveAfterWatch: a request long enough to be watched leaves the
// connection usable, with the deadlines of an idle connection.
func TestKeepAliveAfterWatch(t *testing.T) {
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(2 * DefaultWatchAfter)
		}
		io.WriteString(w, r.URL.Path)
	}))
	c, br := dialLean(t, p.lean)
	for _, path := range []string{"/slow", "/fast", "/slow", "/fast"} {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != path || resp.Close {
			t.Fatalf("%s: %q, close %v", path, b, resp.Close)
		}
	}
}

// TestTimeouts: an idle connection closes after IdleTimeout, a head that
// stops half way after ReadHeaderTimeout, as with net/http, and a
// connection that sends nothing after IdleTimeout, as an idle one
// (net/http: ReadHeaderTimeout; TestFirstByteWait).
func TestTimeouts(t *testing.T) {
	std := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}),
		ReadHeaderTimeout: 300 * time.Millisecond,
		IdleTimeout:       600 * time.Millisecond,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	addr := serveOn(t, New(std))
	for _, c := range []struct {
		name, send string
		want       time.Duration
	}{
		{"idle", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 600 * time.Millisecond},
		{"half a head", "GET / HTTP/1.1\r\nHo", 300 * time.Millisecond},
		{"nothing", "", 600 * time.Millisecond},
	} {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		io.WriteString(nc, c.send)
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, nc)
		took := time.Since(start)
		nc.Close()
		if took < c.want-50*time.Millisecond || took > c.want+time.Second {
			t.Errorf("%s: closed after %v, want about %v", c.name, took, c.want)
		}
	}
}

// TestConnStateAndHandOff: the loop reports the connection's states to
// ConnState as net/http does, and a connection handed off mid-way keeps
// its place: the standard server serves the rest, on the same
// connection, and the hooks see the connection through Unwrap.
func TestConnStateAndHandOff(t *testing.T) {
	var mu sync.Mutex
	var states []string
	var ctxConns []string
	std := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			_, lean := w.(*response)
			fmt.Fprintf(w, "lean=%v", lean)
		}),
		ConnState: func(c net.Conn, st http.ConnState) {
			mu.Lock()
			defer mu.Unlock()
			_, wrapped := c.(*handoffConn)
			states = append(states, fmt.Sprintf("%v/%v", st, wrapped))
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			mu.Lock()
			defer mu.Unlock()
			if u, ok := c.(interface{ Unwrap() net.Conn }); ok {
				c = u.Unwrap()
			}
			_, tcp := c.(*net.TCPConn)
			ctxConns = append(ctxConns, fmt.Sprint(tcp))
			return ctx
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	c, br := dialLean(t, serveOn(t, New(std)))
	for _, x := range []struct{ req, want string }{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "lean=true"},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "lean=true"},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi", "lean=true"},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", "lean=false"},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "lean=false"},
	} {
		io.WriteString(c, x.req)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != x.want {
			t.Fatalf("%q: %q, want %q", x.req, b, x.want)
		}
	}
	c.Close()
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	// The chunked request is handed off before its head is reported:
	// the standard server reports it (new, then active), as net/http
	// reports a request only once its head is in.
	want := "new/false active/false idle/false active/false idle/false active/false idle/false new/true active/true idle/true active/true idle/true closed/true"
	if got := strings.Join(states, " "); got != want {
		t.Errorf("states:\n%s\nwant\n%s", got, want)
	}
	if got := strings.Join(ctxConns, " "); got != "true true" {
		t.Errorf("ConnContext saw TCP connections: %s, want true true (the loop's, then the standard server's through Unwrap)", got)
	}
}

// TestCloseEndsKeepAlive: Close closes the connections, an idle
// keep-alive one and one with a request in flight, as http.Server.Close
// does (the sidecar's drain closes the listener and lets connections end
// on their own first, through ConnState and "Connection: close").
func TestCloseEndsKeepAlive(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" {
			close(entered)
			<-release
		}
		io.WriteString(w, "ok")
	}))
	idle, err := net.Dial("tcp", p.lean)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(idle), nil); err != nil || resp.Close {
		t.Fatalf("%v %v", resp, err)
	}
	busy, err := net.Dial("tcp", p.lean)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(busy, "GET /wait HTTP/1.1\r\nHost: a\r\n\r\n")
	<-entered
	go func() {
		time.Sleep(50 * time.Millisecond)
		close(release)
	}()
	p.leanSrv.Close()
	_ = idle.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("idle connection after Close: %d %v, want closed", n, err)
	}
}

// TestHeaderPerRequest: each request on a connection starts with an empty
// header (the loop reuses the connection's map).
func TestHeaderPerRequest(t *testing.T) {
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Path"+strings.ReplaceAll(r.URL.Path, "/", "-"), "1")
		io.WriteString(w, r.URL.Path)
	}))
	c, br := dialLean(t, p.lean)
	for _, path := range []string{"/a", "/b", "/c"} {
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		want := "X-Path-" + strings.ToUpper(path[1:])
		for k := range resp.Header {
			if strings.HasPrefix(k, "X-Path") && k != want {
				t.Errorf("%s: answer has %s, another request's field", path, k)
			}
		}
		if resp.Header.Get(want) != "1" {
			t.Errorf("%s: answer lacks %s: %v", path, want, resp.Header)
		}
	}
}

// FuzzSetRawHeader: lines SetRawHeader takes are sent as net/http's
// server sends the same fields added to its header map (their order
// aside), whatever the status and the body; lines it declines go
// through the map on both.
func FuzzSetRawHeader(f *testing.F) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lines, _ := base64.StdEncoding.DecodeString(r.Header.Get("X-Lines"))
		body, _ := base64.StdEncoding.DecodeString(r.Header.Get("X-Body"))
		rawHeader(w, string(lines))
		if code := r.Header.Get("X-Status"); code != "" {
			n, _ := strconv.Atoi(code)
			w.WriteHeader(200 + n%400)
		}
		w.Write(body)
	})
	p := startPair(f, h)
	f.Add([]byte("Content-Type: text/plain\r\nContent-Length: 5\r\n"), []byte("hello"), "", false)
	f.Add([]byte("X-A: 1\r\nDate: x\r\n"), []byte("<html>"), "104", true)
	f.Add([]byte("Content-Length: 3\r\nContent-Encoding: br\r\n"), []byte("12345"), "", false)
	f.Add([]byte("Etag: \"x\"\r\nContent-Type: a/b\r\n"), []byte(""), "104", false)
	f.Fuzz(func(t *testing.T, lines, body []byte, status string, head bool) {
		if len(lines) > 2<<10 || len(body) > 8<<10 || len(status) > 3 {
			return
		}
		method := "GET"
		if head {
			method = "HEAD"
		}
		req := method + " / HTTP/1.1\r\nHost: a\r\nX-Lines: " + base64.StdEncoding.EncodeToString(lines) +
			"\r\nX-Body: " + base64.StdEncoding.EncodeToString(body) + "\r\n"
		if _, err := strconv.Atoi(status); err == nil {
			req += "X-Status: " + status + "\r\n"
		}
		p.same(t, "raw-fuzz", []byte(req+"\r\n"))
	})
}

// TestWriteFields: the header map's fields go out as Header.WriteSubset
// writes them, for maps that exercise each of its rules and the fallback
// past eight keys.
func TestWriteFields(t *testing.T) {
	many := http.Header{}
	for i := range 9 {
		many.Set("K"+strconv.Itoa(i), "v")
	}
	for _, h := range []http.Header{
		nil,
		{},
		{"X-Request-Id": {"r"}},
		{"B": {"2", "3"}, "A": {"1"}, "C": {""}},
		{"A": {" lead", "trail\t", "\tboth ", "in\r\nside", "\n", "end\r", "mid dle"}},
		{"Bad Name": {"x"}, "Good": {"y"}, "": {"z"}, "Bad:": {"w"}},
		{"Skip": {"s"}, "Keep": {"k"}},
		many,
	} {
		exclude := map[string]bool{"Skip": true, "K3": true}
		compareFields(t, h, exclude)
		compareFields(t, h, nil)
	}
}

// FuzzWriteFields: whatever the map, writeFields writes what
// WriteSubset writes.
func FuzzWriteFields(f *testing.F) {
	f.Add("A", "1", "B", " 2\r\n", "A")
	f.Add("x y", "", "Z", "\t", "Z")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, skip string) {
		h := http.Header{}
		h[k1] = append(h[k1], v1)
		h[k2] = append(h[k2], v2, v1)
		compareFields(t, h, map[string]bool{skip: true})
	})
}

func compareFields(t *testing.T, h http.Header, exclude map[string]bool) {
	t.Helper()
	var want, got bytes.Buffer
	_ = h.WriteSubset(&want, exclude)
	bw := bufio.NewWriter(&got)
	writeFields(bw, h, exclude)
	_ = bw.Flush()
	if got.String() != want.String() {
		t.Fatalf("writeFields(%q, %v):\n got  %q\n want %q", h, exclude, got.String(), want.String())
	}
}

// TestKeyField: keyField knows every name writeHeader decides on.
func TestKeyField(t *testing.T) {
	for i, n := range field.KnownNames {
		if got := keyField(n); got != 1<<i {
			t.Errorf("keyField(%q) = %b, want %b", n, got, 1<<i)
		}
	}
}

// TestCutLine: a line ends at CRLF; a bare LF or no LF is no line, and
// the string and byte forms agree.
func TestCutLine(t *testing.T) {
	for _, tc := range []struct {
		in, line, rest string
		ok             bool
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET / HTTP/1.1", "Host: a\r\n\r\n", true},
		{"\r\n", "", "", true},
		{"a\nb\r\n", "", "a\nb\r\n", false},
		{"\n", "", "\n", false},
		{"no end", "", "no end", false},
		{"", "", "", false},
	} {
		line, rest, ok := cutLine(tc.in)
		if line != tc.line || rest != tc.rest || ok != tc.ok {
			t.Errorf("cutLine(%q) = %q, %q, %v, want %q, %q, %v", tc.in, line, rest, ok, tc.line, tc.rest, tc.ok)
		}
		bl, br, bok := cutLine([]byte(tc.in))
		if string(bl) != tc.line || string(br) != tc.rest || bok != tc.ok {
			t.Errorf("cutLine([]byte %q) = %q, %q, %v, want %q, %q, %v", tc.in, bl, br, bok, tc.line, tc.rest, tc.ok)
		}
	}
}

// TestCloseCancelsRequests: Close cancels the requests in flight, as
// net/http's Close does (its background read fails), however young: a
// request younger than WatchAfter was not watched yet, and ran on after
// Close until its handler ended by itself (the drain's end then waited
// for it in vain, and it went unrecorded).
func TestCloseCancelsRequests(t *testing.T) {
	entered := make(chan struct{})
	cancelled := make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(newServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done()
		close(cancelled)
	}), io.Discard))
	s.WatchAfter = time.Hour // never watched by the watchdog
	go s.ServeStd()
	go s.Serve(ln)
	c, _ := dialLean(t, ln.Addr().String())
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	<-entered
	s.Close()
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("a request in flight was not cancelled by Close")
	}
}

// scanHead is scan for a test that needs no facts (the server keeps them
// for newRequest: readHead).
func scanHead(b []byte) (n, body int, v verdict) {
	var f headFacts
	return scan(b, &f)
}

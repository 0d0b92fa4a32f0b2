package inbound

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/wellknown"
)

// Found by a probe of the inbound path (session 44): each test fails
// without its fix.

// rawApp is an app that reads a request's head, writes answer, and then
// goes on reading whatever the caller sends, as Node's http server and
// nginx read on behind an early answer. Its address is returned.
func rawApp(t *testing.T, answer []string) netip.AddrPort {
	t.Helper()
	return tcpApp(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if l == "\r\n" {
				break
			}
		}
		for _, a := range answer {
			if _, err := io.WriteString(c, a); err != nil {
				return
			}
		}
		io.Copy(io.Discard, br)
	})
}

// TestEarlyAnswerNotHeldHostage: an app that answers before it has read
// the whole request body (a 401 or 413 to an upload) gets its answer to a
// caller that has paused its body, at once, and the connection closes
// behind it (what is left of the body cannot be told from a next
// request). Before, the answer sat in Go's buffer until the caller sent
// more: net/http's server, about to write the head, waited for the
// body's lock, which the transport held in its read of the caller; and
// --request-body-timeout, whose watch ends at the app's answer, never
// fired.
func TestEarlyAnswerNotHeldHostage(t *testing.T) {
	big := strings.Repeat("b", 64<<10) // more than one read of the copy: its head is flushed before its end
	for _, tc := range []struct {
		name      string
		answer    []string
		code      int
		body      string
		wantClose bool // the head says Connection: close (it was not sent before the answer ended)
	}{
		{"small answer in one piece", []string{"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno"}, 401, "no", true},
		{"large answer, its head flushed first", []string{"HTTP/1.1 413 Content Too Large\r\nContent-Length: " + strconv.Itoa(len(big)) + "\r\n\r\n", big[:1000], big[1000:]}, 413, big, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRigAt(t, rawApp(t, tc.answer), Config{RequestBodyTimeout: time.Hour})
			c, err := net.Dial("tcp", r.front)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// 1,000 bytes of a body of 10 MB, and then a pause.
			io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n"+strings.Repeat("u", 1000))
			c.SetReadDeadline(time.Now().Add(5 * time.Second)) // bounds a failing test only
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer while the caller's body paused: %v", err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != tc.code || string(body) != tc.body {
				t.Fatalf("got %d with %d bytes (%v), want the app's %d with its %d", resp.StatusCode, len(body), err, tc.code, len(tc.body))
			}
			if resp.Close != tc.wantClose {
				t.Errorf("Connection: close is %v, want %v", resp.Close, tc.wantClose)
			}
			if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
				t.Errorf("after the answer: %q, %v; want the connection closed", rest, err)
			}
			if m := recorded(t, r); !strings.Contains(m, `code="`+strconv.Itoa(tc.code)+`"`) {
				t.Errorf("recorded\n%s\nwant the app's %d", m, tc.code)
			}
		})
	}
}

// TestResponseFailsBeforeItsBody: an app that sends its head and then
// dies before any byte of its body gets the caller the sidecar's 502
// reset, as docs/operations.md says ("A response that fails after its
// headers"), not an empty reply where the access log says 502; a
// stream's head that the app flushed still reaches the caller at once,
// before any body byte.
func TestResponseFailsBeforeItsBody(t *testing.T) {
	t.Run("head then death", func(t *testing.T) {
		r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "1000")
			w.Header().Set("X-App", "yes")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}), Config{})
		resp := r.exchange(t, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(wellknown.HeaderError) != wellknown.ErrorReset ||
			resp.Header.Get("X-App") != "" || !resp.Close {
			t.Fatalf("got %d %q, X-App %q, close %v; want the sidecar's 502 reset, none of the app's fields, Connection: close",
				resp.StatusCode, resp.Header.Get(wellknown.HeaderError), resp.Header.Get("X-App"), resp.Close)
		}
		if m := recorded(t, r); !strings.Contains(m, `code="502"`) {
			t.Errorf("recorded\n%s\nwant 502", m)
		}
		if l := r.logLines(t); len(l) != 1 || l[0]["status"] != float64(502) || l[0]["error"] != wellknown.ErrorReset {
			t.Errorf("access log %v, want one line, 502 reset", l)
		}
	})
	t.Run("message says so", func(t *testing.T) {
		r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}), Config{})
		resp, err := http.Get("http://" + r.front + "/x")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e struct{ Message string }
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || !strings.Contains(e.Message, "failed after its headers, before any of its body") {
			t.Errorf("message %q (%v), want one that says the response failed after its headers", e.Message, err)
		}
	})
	for _, tc := range []struct {
		name   string
		header http.Header
	}{
		{"event stream", http.Header{"Content-Type": {"text/event-stream"}}},
		{"stream of unknown length", http.Header{"Content-Type": {"application/grpc-ish"}}},
	} {
		t.Run(tc.name+" head goes at its flush", func(t *testing.T) {
			release := make(chan struct{})
			r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				for k, v := range tc.header {
					w.Header()[k] = v
				}
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
				<-release
				io.WriteString(w, "data: late\n\n")
			}), Config{})
			defer close(release)
			c, err := net.Dial("tcp", r.front)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, "GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
			c.SetReadDeadline(time.Now().Add(5 * time.Second)) // bounds a failing test only
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("the stream's head did not come before its body: %v", err)
			}
		})
	}
}

// TestNoInformationalToHTTP10: an HTTP/1.0 caller gets no 1xx (RFC 9110
// §15.2; Python's http.client on HTTP/1.0 takes a 103 for the final
// answer), only the final one; an HTTP/1.1 caller still gets the app's
// 103. An HTTP/1.0 request's 100-continue expectation is ignored
// (RFC 9110 §10.1.1), not passed on to the app.
func TestNoInformationalToHTTP10(t *testing.T) {
	for _, tc := range []struct {
		name, req  string
		firstLine  string // of the raw answer
		want1xx    bool
		wantExpect string // what the app saw
	}{
		{"103 to HTTP/1.0", "GET /x HTTP/1.0\r\nHost: a\r\n\r\n", "HTTP/1.0 200 OK", false, ""},
		{"100 to HTTP/1.0 that expects it", "POST /x HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", "HTTP/1.0 200 OK", false, ""},
		{"103 to HTTP/1.1", "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "HTTP/1.1 103 Early Hints", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				io.Copy(io.Discard, req.Body) // a 100 Continue for a request that expects it
				if req.Method == http.MethodGet {
					w.Header().Set("Link", "</style.css>; rel=preload")
					w.WriteHeader(http.StatusEarlyHints)
				}
				io.WriteString(w, "final")
			}), Config{})
			c, err := net.Dial("tcp", r.front)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tc.req)
			c.SetReadDeadline(time.Now().Add(5 * time.Second)) // bounds a failing test only
			raw, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read %q: %v", raw, err)
			}
			got := string(raw)
			if first, _, _ := strings.Cut(got, "\r\n"); first != tc.firstLine {
				t.Errorf("first line %q, want %q; the answer:\n%s", first, tc.firstLine, got)
			}
			if has1xx := strings.Contains(got, " 103 ") || strings.Contains(got, " 100 "); has1xx != tc.want1xx {
				t.Errorf("a 1xx in the answer: %v, want %v:\n%s", has1xx, tc.want1xx, got)
			}
			if !strings.Contains(got, " 200 OK\r\n") || !strings.HasSuffix(got, "\r\n\r\nfinal") {
				t.Errorf("want the app's 200 with its body:\n%s", got)
			}
			if e := (<-r.seen).Header.Get("Expect"); e != tc.wantExpect {
				t.Errorf("the app saw Expect %q, want %q", e, tc.wantExpect)
			}
		})
	}
}

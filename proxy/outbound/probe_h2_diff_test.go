//go:build probe

package outbound_test

// Differential probes: the same client bytes to a sidecar whose
// outbound listener is the lean loop and to one whose listener is
// net/http's server (--server=std); the answers, the connection's fate,
// the access logs and what the upstream received are compared. Built
// only with the probe tag (about 3 minutes, too long for every run;
// make lint vets them):
//
//	go test -tags probe -run TestProbe -race ./proxy/outbound
//
// What they found in session 27 is kept as regression tests of their
// own (hardening_app_test.go, hardening_upstream_test.go).

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// recUpstream records every request head (and body) it reads, and
// answers each with answer (default: a 200 with a short body).
type recUpstream struct {
	addr   string
	mu     sync.Mutex
	got    []string
	answer func(c net.Conn, req *http.Request, head []byte) bool // false: close
}

func newRecUpstream(t *testing.T) *recUpstream {
	t.Helper()
	u := &recUpstream{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	u.addr = ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go u.serve(c)
		}
	}()
	return u
}

func (u *recUpstream) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		var head []byte
		for {
			line, err := br.ReadSlice('\n')
			head = append(head, line...)
			if err != nil {
				return
			}
			if len(line) <= 2 && strings.TrimRight(string(line), "\r\n") == "" {
				break
			}
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			u.record("BADHEAD " + string(head))
			return
		}
		var body []byte
		switch {
		case len(req.TransferEncoding) > 0:
			body, _ = io.ReadAll(httputil.NewChunkedReader(br))
			// trailers
			for {
				line, err := br.ReadSlice('\n')
				if err != nil || len(line) <= 2 {
					break
				}
			}
		case req.ContentLength > 0:
			body = make([]byte, req.ContentLength)
			if _, err := io.ReadFull(br, body); err != nil {
				return
			}
		}
		u.record(string(head) + "|body=" + string(body))
		ans := u.answer
		if ans == nil {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Up: 1\r\n\r\nup\n")
			continue
		}
		if !ans(c, req, head) {
			return
		}
	}
}

func (u *recUpstream) record(s string) {
	u.mu.Lock()
	u.got = append(u.got, s)
	u.mu.Unlock()
}

func (u *recUpstream) take() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	g := u.got
	u.got = nil
	return g
}

type diffPair struct {
	lean, std   *testSidecar
	ulean, ustd *recUpstream
	alLean      *accessLog
	alStd       *accessLog
}

func startDiffPair(t *testing.T, policies string, opts ...sidecarOpt) *diffPair {
	t.Helper()
	p := &diffPair{ulean: newRecUpstream(t), ustd: newRecUpstream(t), alLean: &accessLog{}, alStd: &accessLog{}}
	p.lean = startSidecar(t, policies, resolve(p.ulean.addr, geo), append([]sidecarOpt{withServer(sidecar.ServerLean), withAccessLog(p.alLean)}, opts...)...)
	p.std = startSidecar(t, policies, resolve(p.ustd.addr, geo), append([]sidecarOpt{withServer(sidecar.ServerStd), withAccessLog(p.alStd)}, opts...)...)
	return p
}

var (
	probeDateRE = regexp.MustCompile(`(?m)^Date: [^\r]*\r$`)
	probeIDRE   = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}`)
	probeHopRE  = regexp.MustCompile(`minimesh-[0-9a-f]{8}`)
	probePortRE = regexp.MustCompile(`127\.0\.0\.1:[0-9]+`)
)

func probeNorm(s string) string {
	s = probeDateRE.ReplaceAllString(s, "Date: X\r")
	s = probeIDRE.ReplaceAllString(s, "ID")
	s = probeHopRE.ReplaceAllString(s, "minimesh-HOP")
	s = probePortRE.ReplaceAllString(s, "127.0.0.1:PORT")
	return proxytest.SortFields(s)
}

// probeExchange writes raw (in pieces, with gap between them) on a new
// connection, half-closes it unless keepOpen, and returns all that comes
// back until the server closes it, or wait passes.
func probeExchange(t *testing.T, addr string, pieces []string, gap time.Duration, halfClose bool, wait time.Duration) (string, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(wait))
	for i, p := range pieces {
		if i > 0 && gap > 0 {
			time.Sleep(gap)
		}
		if _, err := io.WriteString(c, p); err != nil {
			break
		}
	}
	if halfClose {
		_ = c.(*net.TCPConn).CloseWrite()
	}
	// Read until the server closes, or nothing comes for quiet.
	var got []byte
	buf := make([]byte, 64<<10)
	closed := false
	quiet := 400 * time.Millisecond
	end := time.Now().Add(wait)
	for time.Now().Before(end) {
		_ = c.SetReadDeadline(time.Now().Add(quiet))
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				break
			}
			closed = true
			break
		}
	}
	return string(got), closed
}

type diffCase struct {
	name      string
	pieces    []string
	gap       time.Duration
	halfClose bool
	wait      time.Duration
}

func (p *diffPair) check(t *testing.T, dc diffCase) (lean, std string) {
	t.Helper()
	if dc.wait == 0 {
		dc.wait = 3 * time.Second
	}
	var wg sync.WaitGroup
	var lc, sc bool
	wg.Add(2)
	go func() {
		defer wg.Done()
		lean, lc = probeExchange(t, p.lean.Addr, dc.pieces, dc.gap, dc.halfClose, dc.wait)
	}()
	go func() {
		defer wg.Done()
		std, sc = probeExchange(t, p.std.Addr, dc.pieces, dc.gap, dc.halfClose, dc.wait)
	}()
	wg.Wait()
	lean, std = probeNorm(lean), probeNorm(std)
	time.Sleep(50 * time.Millisecond)
	ul, us := p.ulean.take(), p.ustd.take()
	ulj, usj := probeNorm(strings.Join(ul, "\n--\n")), probeNorm(strings.Join(us, "\n--\n"))
	if lean != std || lc != sc {
		t.Errorf("%s: answers differ\nraw:  %q\nlean (closed=%v): %q\nstd  (closed=%v): %q", dc.name, strings.Join(dc.pieces, ""), lc, lean, sc, std)
	}
	if ulj != usj {
		t.Errorf("%s: upstream saw different requests\nraw:  %q\nlean: %q\nstd:  %q", dc.name, strings.Join(dc.pieces, ""), ulj, usj)
	}
	return lean, std
}

func one(s string) []string { return []string{s} }

// TestProbeH2_DiffBasic: a batch of raw client inputs to both servers.
func TestProbeH2_DiffBasic(t *testing.T) {
	p := startDiffPair(t, "")
	h := "Host: " + geo + "\r\n"
	cases := []diffCase{
		{name: "get", pieces: one("GET /a HTTP/1.1\r\n" + h + "\r\n")},
		{name: "abs", pieces: one("GET http://" + geo + "/a?b=c HTTP/1.1\r\n" + h + "\r\n")},
		{name: "head", pieces: one("HEAD /a HTTP/1.1\r\n" + h + "\r\n")},
		{name: "options", pieces: one("OPTIONS /a HTTP/1.1\r\n" + h + "\r\n")},
		{name: "options*", pieces: one("OPTIONS * HTTP/1.1\r\n" + h + "\r\n")},
		{name: "delete", pieces: one("DELETE /a HTTP/1.1\r\n" + h + "\r\n")},
		{name: "delete-cl0", pieces: one("DELETE /a HTTP/1.1\r\n" + h + "Content-Length: 0\r\n\r\n")},
		{name: "get-cl0", pieces: one("GET /a HTTP/1.1\r\n" + h + "Content-Length: 0\r\n\r\n")},
		{name: "get-close", pieces: one("GET /a HTTP/1.1\r\n" + h + "Connection: close\r\n\r\nGET /b HTTP/1.1\r\n" + h + "\r\n")},
		{name: "http10", pieces: one("GET http://" + geo + "/a HTTP/1.0\r\n\r\n")},
		{name: "http10-ka", pieces: one("GET http://" + geo + "/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")},
		{name: "http10-host", pieces: one("GET /a HTTP/1.0\r\n" + h + "\r\n")},
		{name: "pipelined", pieces: one("GET /1 HTTP/1.1\r\n" + h + "\r\nGET /2 HTTP/1.1\r\n" + h + "\r\n")},
		{name: "pipelined-body", pieces: one("GET /1 HTTP/1.1\r\n" + h + "\r\nPOST /2 HTTP/1.1\r\n" + h + "Content-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\n" + h + "\r\n")},
		{name: "seq-then-pipe", pieces: []string{"GET /1 HTTP/1.1\r\n" + h + "\r\n", "GET /2 HTTP/1.1\r\n" + h + "\r\nGET /3 HTTP/1.1\r\n" + h + "\r\n"}, gap: 200 * time.Millisecond},
		{name: "cl-te", pieces: one("POST /a HTTP/1.1\r\n" + h + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + h + "\r\n")},
		{name: "get-cl-te", pieces: one("GET /a HTTP/1.1\r\n" + h + "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")},
		{name: "dup-cl", pieces: one("GET /a HTTP/1.1\r\n" + h + "Content-Length: 0\r\nContent-Length: 0\r\n\r\n")},
		{name: "cl-list", pieces: one("GET /a HTTP/1.1\r\n" + h + "Content-Length: 0, 0\r\n\r\n")},
		{name: "bad-chunk", pieces: one("POST /a HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")},
		{name: "chunk-ext", pieces: one("POST /a HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n")},
		{name: "bare-lf", pieces: one("GET /a HTTP/1.1\n" + "Host: " + geo + "\n\n")},
		{name: "obs-fold", pieces: one("GET /a HTTP/1.1\r\n" + h + "X-A: 1\r\n 2\r\n\r\n")},
		{name: "space-colon", pieces: one("GET /a HTTP/1.1\r\n" + h + "X-A : 1\r\n\r\n")},
		{name: "nul", pieces: one("GET /a HTTP/1.1\r\n" + h + "X-A: 1\x002\r\n\r\n")},
		{name: "cr-in-value", pieces: one("GET /a HTTP/1.1\r\n" + h + "X-A: 1\r2\r\n\r\n")},
		{name: "tab-value", pieces: one("GET /a HTTP/1.1\r\n" + h + "X-A:\t1\t2\t\r\n\r\n")},
		{name: "empty-value", pieces: one("GET /a HTTP/1.1\r\n" + h + "X-A:\r\n\r\n")},
		{name: "high-bytes", pieces: one("GET /a HTTP/1.1\r\n" + h + "X-A: \xc3\xa9\xff\r\n\r\n")},
		{name: "host-mismatch", pieces: one("GET http://" + geo + "/a HTTP/1.1\r\nHost: other:1\r\n\r\n")},
		{name: "two-hosts", pieces: one("GET /a HTTP/1.1\r\n" + h + h + "\r\n")},
		{name: "no-host", pieces: one("GET /a HTTP/1.1\r\n\r\n")},
		{name: "empty-host", pieces: one("GET /a HTTP/1.1\r\nHost:\r\n\r\n")},
		{name: "empty-host10", pieces: one("GET /a HTTP/1.0\r\nHost:\r\n\r\n")},
		{name: "abs-empty-host", pieces: one("GET http:///a HTTP/1.1\r\n" + h + "\r\n")},
		{name: "abs-userinfo", pieces: one("GET http://u:p@" + geo + "/a HTTP/1.1\r\n" + h + "\r\n")},
		{name: "abs-upper", pieces: one("GET HTTP://GEO-SERVICE:8000/a HTTP/1.1\r\n" + h + "\r\n")},
		{name: "abs-https", pieces: one("GET https://" + geo + "/a HTTP/1.1\r\n" + h + "\r\n")},
		{name: "abs-noport-path", pieces: one("GET http://geo-service:8000 HTTP/1.1\r\n" + h + "\r\n")},
		{name: "dblslash", pieces: one("GET //evil/x HTTP/1.1\r\n" + h + "\r\n")},
		{name: "pct", pieces: one("GET /a%2fb%zz HTTP/1.1\r\n" + h + "\r\n")},
		{name: "pct2", pieces: one("GET /a%2fb?x=%zz HTTP/1.1\r\n" + h + "\r\n")},
		{name: "frag", pieces: one("GET /a#frag HTTP/1.1\r\n" + h + "\r\n")},
		{name: "query-semicolon", pieces: one("GET /a?x=1;y=2 HTTP/1.1\r\n" + h + "\r\n")},
		{name: "empty-query", pieces: one("GET /a? HTTP/1.1\r\n" + h + "\r\n")},
		{name: "expect", pieces: one("GET /a HTTP/1.1\r\n" + h + "Expect: 100-continue\r\n\r\n")},
		{name: "post-expect", pieces: []string{"POST /a HTTP/1.1\r\n" + h + "Content-Length: 3\r\nExpect: 100-continue\r\n\r\n", "abc"}, gap: 100 * time.Millisecond},
		{name: "upgrade", pieces: one("GET /a HTTP/1.1\r\n" + h + "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")},
		{name: "connection-lists", pieces: one("GET /a HTTP/1.1\r\n" + h + "Connection: X-Drop, keep-alive\r\nX-Drop: 1\r\nX-Keep: 2\r\n\r\n")},
		{name: "connection-lists-host", pieces: one("GET /a HTTP/1.1\r\n" + h + "Connection: Host, X-Request-Id, Via\r\nX-Request-Id: abc\r\nVia: 1.1 other\r\n\r\n")},
		{name: "te-trailers", pieces: one("GET /a HTTP/1.1\r\n" + h + "Te: trailers, gzip\r\nConnection: Te\r\n\r\n")},
		{name: "proxy-auth", pieces: one("GET /a HTTP/1.1\r\n" + h + "Proxy-Authorization: Basic x\r\nProxy-Connection: keep-alive\r\nKeep-Alive: 5\r\n\r\n")},
		{name: "forwarded", pieces: one("GET /a HTTP/1.1\r\n" + h + "Connection: Forwarded, X-Forwarded-For\r\nForwarded: for=x\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")},
		{name: "ua-multi", pieces: one("GET /a HTTP/1.1\r\n" + h + "User-Agent: a\r\nUser-Agent: b\r\n\r\n")},
		{name: "ua-empty", pieces: one("GET /a HTTP/1.1\r\n" + h + "User-Agent:\r\n\r\n")},
		{name: "ua-empty-then", pieces: one("GET /a HTTP/1.1\r\n" + h + "User-Agent:\r\nUser-Agent: b\r\n\r\n")},
		{name: "lower-names", pieces: one("GET /a HTTP/1.1\r\nhost: " + geo + "\r\nx-request-id: my-id\r\nvia: 1.1 x\r\nconnection: x-a\r\nx-a: 1\r\n\r\n")},
		{name: "req-id-bad", pieces: one("GET /a HTTP/1.1\r\n" + h + "X-Request-Id: a b\r\n\r\n")},
		{name: "req-id-two", pieces: one("GET /a HTTP/1.1\r\n" + h + "X-Request-Id: one\r\nX-Request-Id: two\r\n\r\n")},
		{name: "via-other", pieces: one("GET /a HTTP/1.1\r\n" + h + "Via: 1.1 a\r\nX-B: 1\r\nVia: 1.1 b\r\n\r\n")},
		{name: "pragma", pieces: one("GET /a HTTP/1.1\r\n" + h + "Pragma: no-cache\r\n\r\n")},
		{name: "method-lower", pieces: one("get /a HTTP/1.1\r\n" + h + "\r\n")},
		{name: "method-trace", pieces: one("TRACE /a HTTP/1.1\r\n" + h + "\r\n")},
		{name: "connect", pieces: one("CONNECT " + geo + " HTTP/1.1\r\n" + h + "\r\n")},
		{name: "leading-crlf", pieces: one("\r\nGET /a HTTP/1.1\r\n" + h + "\r\n")},
		{name: "version-1.2", pieces: one("GET /a HTTP/1.2\r\n" + h + "\r\n")},
		{name: "huge-head", pieces: one("GET /a HTTP/1.1\r\n" + h + "X-Big: " + strings.Repeat("b", 70<<10) + "\r\n\r\n")},
		{name: "3k-head", pieces: one("GET /a HTTP/1.1\r\n" + h + "X-Big: " + strings.Repeat("b", 3<<10) + "\r\n\r\n")},
		{name: "5k-head", pieces: one("GET /a HTTP/1.1\r\n" + h + "X-Big: " + strings.Repeat("b", 5<<10) + "\r\n\r\n")},
		{name: "cut-head", pieces: one("GET /a HTTP/1.1\r\n" + h)},
		{name: "self-admin", pieces: one("GET /a HTTP/1.1\r\nHost: ADMIN\r\n\r\n")},
	}
	for _, dc := range cases {
		for i, pc := range dc.pieces {
			dc.pieces[i] = strings.ReplaceAll(pc, "ADMIN", "localhost:1")
		}
		p.check(t, dc)
	}
	p.sameLogs(t)
}

// sameLogs compares the two sidecars' access logs, line by line.
func (p *diffPair) sameLogs(t *testing.T) {
	t.Helper()
	time.Sleep(600 * time.Millisecond)
	l, s := p.alLean.entries(t), p.alStd.entries(t)
	norm := func(e accessEntry) string {
		e.RequestID, e.TraceID, e.SpanID = probeNorm(e.RequestID), "", ""
		return fmt.Sprintf("%+v", e)
	}
	for i := 0; i < max(len(l), len(s)); i++ {
		var a, b string
		if i < len(l) {
			a = norm(l[i])
		}
		if i < len(s) {
			b = norm(s[i])
		}
		if a != b {
			t.Errorf("access log line %d:\nlean: %s\nstd:  %s", i, a, b)
		}
	}
}

// byteAtATime splits s into one-byte pieces.
func byteAtATime(s string) []string {
	out := make([]string, len(s))
	for i := range s {
		out[i] = s[i : i+1]
	}
	return out
}

func TestProbeH2_DiffSlow(t *testing.T) {
	p := startDiffPair(t, "")
	h := "Host: " + geo + "\r\n"
	p.check(t, diffCase{name: "byte-at-a-time", pieces: byteAtATime("GET /a HTTP/1.1\r\n" + h + "X-A: 1\r\n\r\n"), gap: 2 * time.Millisecond})
	p.check(t, diffCase{name: "two-then-bytes", pieces: append([]string{"GET /1 HTTP/1.1\r\n" + h + "\r\n"}, byteAtATime("GET /2 HTTP/1.1\r\n"+h+"\r\n")...), gap: 5 * time.Millisecond})
	p.check(t, diffCase{name: "no-halfclose", pieces: one("GET /a HTTP/1.1\r\n" + h + "\r\n"), wait: 500 * time.Millisecond})
	_ = fmt.Sprint()
}

// TestProbeH2_DiffTargets: request targets and Host headers that name
// the destination oddly, the sidecar's own ports among them.
func TestProbeH2_DiffTargets(t *testing.T) {
	p := startDiffPair(t, "")
	h := "Host: " + geo + "\r\n"
	for _, tc := range []struct{ name, head string }{
		{"abs-query-nopath", "GET http://" + geo + "?x=1 HTTP/1.1\r\n" + h + "\r\n"},
		{"abs-frag", "GET http://" + geo + "#f HTTP/1.1\r\n" + h + "\r\n"},
		{"abs-upper-host", "GET http://GEO-Service:8000/a HTTP/1.1\r\n" + h + "\r\n"},
		{"abs-port0", "GET http://geo-service:08000/a HTTP/1.1\r\n" + h + "\r\n"},
		{"abs-two-ports", "GET http://geo-service:8000:1/a HTTP/1.1\r\n" + h + "\r\n"},
		{"abs-empty-port", "GET http://geo-service:/a HTTP/1.1\r\n" + h + "\r\n"},
		{"abs-dot", "GET http://geo-service.:8000/a HTTP/1.1\r\n" + h + "\r\n"},
		{"abs-v6", "GET http://[::1]:1/a HTTP/1.1\r\n" + h + "\r\n"},
		{"abs-pct-host", "GET http://geo%2dservice:8000/a HTTP/1.1\r\n" + h + "\r\n"},
		{"host-port0", "GET /a HTTP/1.1\r\nHost: geo-service:0\r\n\r\n"},
		{"host-bigport", "GET /a HTTP/1.1\r\nHost: geo-service:70000\r\n\r\n"},
		{"host-trailing-colon", "GET /a HTTP/1.1\r\nHost: geo-service:\r\n\r\n"},
		{"host-v6", "GET /a HTTP/1.1\r\nHost: [::1]:1\r\n\r\n"},
		{"host-userinfo", "GET /a HTTP/1.1\r\nHost: u@geo-service:8000\r\n\r\n"},
		{"host-path", "GET /a HTTP/1.1\r\nHost: geo-service:8000/x\r\n\r\n"},
		{"self-out", "GET /a HTTP/1.1\r\nHost: SELF\r\n\r\n"},
		{"self-out-localhost", "GET http://localhost:SELFPORT/a HTTP/1.1\r\n" + h + "\r\n"},
		{"self-out-0", "GET http://0:SELFPORT/a HTTP/1.1\r\n" + h + "\r\n"},
		{"self-out-v6", "GET http://[::ffff:127.0.0.1]:SELFPORT/a HTTP/1.1\r\n" + h + "\r\n"},
		{"self-admin", "GET http://ADMIN/ready HTTP/1.1\r\n" + h + "\r\n"},
		{"self-admin-127.1", "GET http://127.0.0.2:ADMINPORT/ready HTTP/1.1\r\n" + h + "\r\n"},
		{"head-self", "HEAD http://ADMIN/ready HTTP/1.1\r\n" + h + "\r\n"},
		{"options-self", "OPTIONS http://ADMIN/ready HTTP/1.1\r\n" + h + "\r\n"},
		{"delete-self", "DELETE http://ADMIN/ready HTTP/1.1\r\n" + h + "\r\n"},
		{"http10-nohost", "GET /a HTTP/1.0\r\n\r\n"},
	} {
		// Each sidecar is asked about its own ports.
		mk := func(sc *testSidecar) string {
			_, port, _ := net.SplitHostPort(sc.Addr)
			_, aport, _ := net.SplitHostPort(sc.Admin)
			r := strings.NewReplacer("SELFPORT", port, "SELF", sc.Addr, "ADMINPORT", aport, "ADMIN", sc.Admin)
			return r.Replace(tc.head)
		}
		lean, lc := probeExchange(t, p.lean.Addr, one(mk(p.lean)), 0, false, 3*time.Second)
		std, stc := probeExchange(t, p.std.Addr, one(mk(p.std)), 0, false, 3*time.Second)
		lean, std = probeNorm(lean), probeNorm(std)
		for _, sc := range []*testSidecar{p.lean, p.std} {
			_, port, _ := net.SplitHostPort(sc.Addr)
			_, aport, _ := net.SplitHostPort(sc.Admin)
			lean = strings.NewReplacer(port, "SELFPORT", aport, "ADMINPORT").Replace(lean)
			std = strings.NewReplacer(port, "SELFPORT", aport, "ADMINPORT").Replace(std)
		}
		time.Sleep(30 * time.Millisecond)
		ul, us := probeNorm(strings.Join(p.ulean.take(), "\n--\n")), probeNorm(strings.Join(p.ustd.take(), "\n--\n"))
		if lean != std || lc != stc || ul != us {
			t.Errorf("%s:\nlean (closed=%v): %q\nstd  (closed=%v): %q\nupstream lean: %q\nupstream std:  %q", tc.name, lc, lean, stc, std, ul, us)
		}
		if strings.HasPrefix(tc.name, "self") && (strings.Contains(lean, " 200 ") || strings.Contains(std, " 200 ")) {
			t.Errorf("%s reached the sidecar's own port: %q", tc.name, lean)
		}
	}
}

// TestProbeH2_DiffErrorAnswers: the sidecar's own answers (400, 403,
// 502, 508) to HTTP/1.0 keep-alive, HEAD and pipelined requests.
func TestProbeH2_DiffErrorAnswers(t *testing.T) {
	p := startDiffPair(t, "")
	for _, raw := range []string{
		"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"HEAD /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"GET http://localhost:1/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"HEAD http://localhost:1/a HTTP/1.1\r\nHost: x\r\n\r\n",
		"OPTIONS http://localhost:1/a HTTP/1.1\r\nHost: x\r\n\r\n",
		"HEAD /a HTTP/1.1\r\nHost: x:99999\r\n\r\nGET /b HTTP/1.1\r\nHost: x:99999\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: x:99999\r\n\r\n",
		"GET http://localhost:1/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET https://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET ftp://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		p.check(t, diffCase{name: "err", pieces: one(raw)})
	}
	p.sameLogs(t)
}

// TestProbeH2_DiffDraining: answers while the handler drains
// (Connection: close on every answer).
func TestProbeH2_DiffDraining(t *testing.T) {
	p := startDiffPair(t, "")
	p.lean.S.Handler().SetDraining(true)
	p.std.S.Handler().SetDraining(true)
	h := "Host: " + geo + "\r\n"
	for _, raw := range []string{
		"GET /a HTTP/1.1\r\n" + h + "\r\nGET /b HTTP/1.1\r\n" + h + "\r\n",
		"HEAD /a HTTP/1.1\r\n" + h + "\r\n",
		"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n" + h + "\r\n",
		"GET /a HTTP/1.1\r\nHost: x:99999\r\n\r\n",
		"GET http://localhost:1/a HTTP/1.1\r\n" + h + "\r\n",
	} {
		lean, _ := p.check(t, diffCase{name: "draining", pieces: one(raw)})
		if !strings.Contains(lean, "Connection: close") {
			t.Errorf("draining answer without Connection: close: %q", lean)
		}
	}
}

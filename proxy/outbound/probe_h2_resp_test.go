//go:build probe

package outbound_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestProbeH2_DiffUpstreamAnswers: one client request, many upstream
// answers (raw bytes), through a lean and a std sidecar; the app must get
// the same bytes and the same connection fate.
func TestProbeH2_DiffUpstreamAnswers(t *testing.T) {
	p := startDiffPair(t, "")
	var cur atomic.Value // string: the raw answer
	answer := func(c net.Conn, req *http.Request, head []byte) bool {
		a := cur.Load().(string)
		parts := strings.Split(a, "<PAUSE>")
		for i, part := range parts {
			if i > 0 {
				time.Sleep(150 * time.Millisecond)
			}
			if part == "<RESET>" {
				_ = c.(*net.TCPConn).SetLinger(0)
				return false
			}
			if _, err := io.WriteString(c, part); err != nil {
				return false
			}
		}
		return !strings.HasSuffix(a, "<CLOSE>")
	}
	p.ulean.answer, p.ustd.answer = answer, answer
	answers := []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok<CLOSE>",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Undeclared: 1\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nbody to eof<CLOSE>",
		"HTTP/1.1 200 OK\r\n\r\nbody to eof<CLOSE>",
		"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Type: text/x\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort<CLOSE>",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort<PAUSE><RESET>",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n<PAUSE><RESET>",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nokokok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nTe: x\r\nUpgrade: h2c\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: X-Hop\r\nX-Hop: 1\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: upstream\r\nX-Request-Id: two\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-request-id: upstream\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A:  spaced  \r\nX-B:\r\nX-C:\ttab\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Encoding: gzip\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Encoding:\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type:\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n<PAUSE>2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 299 Whatever\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 999 Nine\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nVary: A\r\nVary: B\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Bad\x01: 1\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Sp ace: 1\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Fold: a\r\n b\r\n\r\nok",
		"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: " + strings.Repeat("b", 3000) + "\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n" + strings.Repeat("z", 3000),
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok<PAUSE>",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
	}
	clients := []string{
		"GET /a HTTP/1.1\r\nHost: " + geo + "\r\n\r\n",
		"HEAD /a HTTP/1.1\r\nHost: " + geo + "\r\n\r\n",
		"GET http://" + geo + "/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"GET http://" + geo + "/a HTTP/1.0\r\n\r\n",
	}
	for _, a := range answers {
		for _, c := range clients {
			cur.Store(a)
			// Each case on fresh upstream connections: a reused one would
			// carry what a previous answer left.
			p.lean.S.Handler().CloseIdleConnections()
			p.std.S.Handler().CloseIdleConnections()
			p.check(t, diffCase{name: "answer " + strings.ReplaceAll(a, "\r\n", "|") + " to " + strings.SplitN(c, "\r", 2)[0], pieces: one(c)})
		}
	}
}

package outbound

import (
	"bufio"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// rawRequests is a raw HTTP/1.1 upstream (proxytest.RawServer) that
// reads the requests on each connection in turn and hands each to answer
// with the connection and its number (from 1). The connection closes
// when answer returns false or a request does not parse (the client's
// close among them). It returns the address and the connections
// accepted.
func rawRequests(t testing.TB, answer func(c net.Conn, n int, req *http.Request) bool) (string, *atomic.Int32) {
	return proxytest.RawServer(t, func(c net.Conn, n int) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil || !answer(c, n, req) {
				return
			}
		}
	})
}

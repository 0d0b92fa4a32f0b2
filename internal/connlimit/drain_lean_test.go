package connlimit

import (
	"io"
	"log"
	"net/http"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/leanhttp"
)

// TestSweepLeanHead drives the drain's sweep (sweepHead) over the
// sidecar's lean server loop, whose first read of a request is lazy
// (ReadLazy). A head whose parts keep arriving is answered, however long
// it takes; one that stalls part way is closed after grace without a
// byte, as on net/http's server (TestSweepHeaderArriving), and not held
// until the header timeout (the loop reported such a head active from its
// first byte, and a stalled "GET " held the drain for 10 s).
func TestSweepLeanHead(t *testing.T) {
	for _, tc := range []headDrainCase{
		{name: "new G stalls", parts: []string{"G"}, stall: true},
		{name: "new GET stalls", parts: []string{"GET "}, stall: true},
		{name: "new request line stalls", parts: []string{"GET / HTTP/1.1\r\n"}, stall: true},
		{name: "kept-alive GE stalls", keptAlive: true, parts: []string{"GE"}, stall: true},
		{name: "kept-alive header line stalls", keptAlive: true, parts: []string{"GET / HTTP/1.1\r\n", "Host: x\r\n"}, stall: true},
		{name: "new head arrives", parts: []string{"GET / HTTP/1.1\r\n", "Host: x\r\n", "X-Part-1: y\r\n", "X-Part-2: y\r\n"}},
		{name: "kept-alive head arrives", keptAlive: true, parts: []string{"G", "ET / HTTP/1.1\r\n", "Host: x\r\n", "X-Part-2: y\r\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t, 0)
			srv := leanhttp.New(&http.Server{
				ConnState: l.ConnState,
				Handler:   okPart2,
				// Far off: only the drain may close the connection.
				ReadHeaderTimeout: time.Minute,
				IdleTimeout:       time.Minute,
				ErrorLog:          log.New(io.Discard, "", 0),
			})
			go func() { _ = srv.ServeStd() }()
			go func() { _ = srv.Serve(l) }()
			t.Cleanup(func() { srv.Close() })
			sweepHead(t, l, tc)
		})
	}
}

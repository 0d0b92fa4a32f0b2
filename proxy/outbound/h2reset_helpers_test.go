package outbound

import (
	"net"
	"sync/atomic"
	"testing"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"golang.org/x/net/http2"
)

// resettingH2Upstream is an h2c upstream that reads each request whole
// and then resets its stream with PROTOCOL_ERROR: it may have acted on
// the request. It counts the streams it was sent and the connections it
// accepted. The internal tests (TestH2ResetRedialConcurrent) and the
// external ones (h2_reset_test.go, through ResettingH2Upstream) share it.
func resettingH2Upstream(t *testing.T) (addr string, streams, conns *atomic.Int32) {
	t.Helper()
	streams = new(atomic.Int32)
	addr, conns = proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		serveH2c(c, func(fr *http2.Framer, f http2.Frame) error {
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				streams.Add(1)
				if f.StreamEnded() {
					return fr.WriteRSTStream(f.StreamID, http2.ErrCodeProtocol)
				}
			case *http2.DataFrame:
				if f.StreamEnded() {
					return fr.WriteRSTStream(f.StreamID, http2.ErrCodeProtocol)
				}
			}
			return nil
		})
	})
	return addr, streams, conns
}

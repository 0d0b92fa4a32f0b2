package outbound

import (
	"io"
	"net"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
)

// resettingH2Upstream is an h2c upstream that reads each request whole
// and then resets its stream with PROTOCOL_ERROR: it may have acted on
// the request. It counts the streams it was sent and the connections it
// accepted. The internal tests (TestH2ResetRedialConcurrent) and the
// external ones (h2_reset_test.go, through ResettingH2Upstream) share it.
func resettingH2Upstream(t *testing.T) (addr string, streams, conns *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	streams, conns = new(atomic.Int32), new(atomic.Int32)
	serve := func(c net.Conn) {
		defer c.Close()
		if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
			return
		}
		fr := http2.NewFramer(c, c)
		if fr.WriteSettings() != nil {
			return
		}
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					err = fr.WriteSettingsAck()
				}
			case *http2.PingFrame:
				if !f.IsAck() {
					err = fr.WritePing(true, f.Data)
				}
			case *http2.HeadersFrame:
				streams.Add(1)
				if f.StreamEnded() {
					err = fr.WriteRSTStream(f.StreamID, http2.ErrCodeProtocol)
				}
			case *http2.DataFrame:
				if f.StreamEnded() {
					err = fr.WriteRSTStream(f.StreamID, http2.ErrCodeProtocol)
				}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go serve(c)
		}
	}()
	return ln.Addr().String(), streams, conns
}

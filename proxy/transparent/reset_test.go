package transparent

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// TestResetDuringDetectionReachesTheRelay: a caller that resets its
// connection (SO_LINGER 0, then close) during detection, before or after
// a few bytes, is a reset to the relay too: the socket reports
// ECONNRESET once, to detection, and reads as an orderly end after that,
// so the relay passed it on as a FIN and logged no error. The relay's
// first read after the peeked bytes returns it (ReadErr); an orderly
// close stays an orderly end.
func TestResetDuringDetectionReachesTheRelay(t *testing.T) {
	for _, tc := range []struct {
		name      string
		send      string
		reset     bool
		protocol  Protocol
		wantReset bool
	}{
		{"reset before a byte", "", true, NoData, true},
		{"reset after two bytes", "GE", true, Unknown, true},
		{"closed before a byte", "", false, NoData, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			client, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			server, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			if tc.send != "" {
				if _, err := client.Write([]byte(tc.send)); err != nil {
					t.Fatal(err)
				}
			}
			if tc.reset {
				_ = client.(*net.TCPConn).SetLinger(0)
			}
			client.Close()

			type seen struct {
				p     Protocol
				bytes string
				err   error
			}
			got := make(chan seen, 1)
			d := New(Config{DetectTimeout: 10 * time.Second, OnTCP: func(c *Conn) {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second)) // bounds a failing test only
				b, err := io.ReadAll(c)                                 // as the relay reads: until an error or the end
				got <- seen{c.Protocol, string(b), err}
			}})
			d.detecting.Add()
			d.dispatch(server, netip.MustParseAddrPort("10.0.0.1:8081"))
			s := <-got
			if s.p != tc.protocol || s.bytes != tc.send {
				t.Errorf("detected %s with %q, want %s with %q", s.p, s.bytes, tc.protocol, tc.send)
			}
			if isReset := errors.Is(s.err, syscall.ECONNRESET); isReset != tc.wantReset || (!tc.wantReset && s.err != nil) {
				t.Errorf("the relay read %q then %v; want the reset: %v", s.bytes, s.err, tc.wantReset)
			}
		})
	}
}

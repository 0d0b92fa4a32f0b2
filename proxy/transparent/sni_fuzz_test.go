package transparent

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzClientHelloSNI checks the SNI parser on any bytes: it never panics,
// reports only names it accepts as host names, and agrees with crypto/tls
// on every ClientHello that crypto/tls itself reads (run with
// go test -fuzz FuzzClientHelloSNI ./proxy/transparent/).
func FuzzClientHelloSNI(f *testing.F) {
	for _, name := range []string{"api.example.com", "", "a", "xn--bcher-kva.example", "UPPER.Example.COM"} {
		h := clientHello(f, name)
		f.Add(h)
		f.Add(splitHello(h, 7))
		f.Add(h[:len(h)-1])
	}
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00})
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sni, st := clientHelloSNI(b)
		if sni != "" && (st != helloOK || !validHost(sni)) {
			t.Fatalf("status %d with SNI %q", st, sni)
		}
		p, more := Classify(b)
		if p == TLS && !more && st == helloMore {
			t.Fatalf("TLS decided while the parser wants more")
		}
		if !oneRecordHello(b) {
			return
		}
		name, ok := tlsServerName(b)
		if !ok {
			return // crypto/tls refuses it; the parser may be more lenient
		}
		if st != helloOK {
			t.Fatalf("crypto/tls reads a ClientHello (SNI %q), the parser says %d", name, st)
		}
		if !validHost(name) {
			name = ""
		}
		if sni != name {
			t.Fatalf("SNI %q, crypto/tls says %q", sni, name)
		}
	})
}

// oneRecordHello reports whether b starts with a TLS 1.x handshake record
// of at most 2^14 bytes that holds a whole handshake message: the inputs on
// which crypto/tls is the parser's oracle.
func oneRecordHello(b []byte) bool {
	if len(b) < 9 || b[0] != 0x16 || b[1] != 3 {
		return false
	}
	n := int(b[3])<<8 | int(b[4])
	if n > maxRecord || len(b) < 5+n || n < 4 {
		return false
	}
	return 4+(int(b[6])<<16|int(b[7])<<8|int(b[8])) <= n
}

var errStop = errors.New("stop")

// tlsServerName runs crypto/tls's server on b and returns the ClientHello's
// server name, if crypto/tls got as far as reading one.
func tlsServerName(b []byte) (string, bool) {
	var name string
	var seen bool
	conn := &replayConn{data: b}
	s := tls.Server(conn, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		name, seen = h.ServerName, true
		return nil, errStop
	}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.HandshakeContext(ctx)
	return name, seen
}

// replayConn reads b, then EOF; writes vanish.
type replayConn struct {
	net.Conn
	data []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.data)
	c.data = c.data[n:]
	return n, nil
}
func (c *replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *replayConn) Close() error                     { return nil }
func (c *replayConn) SetDeadline(time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }
func (c *replayConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *replayConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

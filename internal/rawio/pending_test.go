package rawio

import (
	"io"
	"net"
	"testing"
	"time"
)

// unwrapper is a connection wrapped as connlimit and the outbound dialer
// wrap theirs.
type unwrapper struct{ net.Conn }

func (u unwrapper) Unwrap() net.Conn { return u.Conn }

// eventually polls Pending until it says want: bytes written on
// loopback arrive at once, but nothing promises before write returns.
func eventually(t *testing.T, c net.Conn, want bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); Pending(c) != want; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: Pending = %v, want %v", what, !want, want)
		}
	}
}

// views are the ways the package meets one raw connection: itself, its
// TCP connection, and either wrapped as connlimit and the dialer wrap.
var views = []struct {
	name string
	conn func(*Conn) net.Conn
}{
	{"raw", func(c *Conn) net.Conn { return c }},
	{"tcp", func(c *Conn) net.Conn { return c.TCPConn }},
	{"wrapped raw", func(c *Conn) net.Conn { return unwrapper{c} }},
	{"wrapped tcp", func(c *Conn) net.Conn { return unwrapper{c.TCPConn} }},
}

func TestPending(t *testing.T) {
	for _, tc := range views {
		t.Run(tc.name, func(t *testing.T) {
			raw, peer := pair(t)
			c := tc.conn(raw)
			if Pending(c) {
				t.Fatal("an idle connection with nothing sent is pending")
			}
			if _, err := peer.Write([]byte("HTTP/1.1 408 Request Timeout\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
			eventually(t, c, true, "bytes sent unasked")
			// Looking consumed nothing.
			buf := make([]byte, 64)
			if n, err := c.Read(buf); err != nil || string(buf[:n]) != "HTTP/1.1 408 Request Timeout\r\n\r\n" {
				t.Fatalf("read after Pending: %q, %v", buf[:n], err)
			}
			if Pending(c) {
				t.Fatal("pending after every byte was read")
			}
			peer.Close()
			eventually(t, c, true, "the peer's close")
			if _, err := c.Read(buf); err != io.EOF {
				t.Fatalf("read after the peer's close: %v, want EOF", err)
			}
			raw.Close()
			if !Pending(c) {
				t.Fatal("a closed connection is not pending")
			}
		})
	}
}

// TestClosed: only the peer's orderly end with nothing unread before it
// is Closed; bytes before it, or nothing at all, are not.
func TestClosed(t *testing.T) {
	for _, tc := range views {
		t.Run(tc.name, func(t *testing.T) {
			raw, peer := pair(t)
			c := tc.conn(raw)
			if Closed(c) {
				t.Fatal("an open connection with nothing sent is closed")
			}
			if _, err := peer.Write([]byte("bye")); err != nil {
				t.Fatal(err)
			}
			peer.CloseWrite()
			eventually(t, c, true, "bytes and the peer's end")
			if Closed(c) {
				t.Fatal("closed with bytes unread before the end")
			}
			buf := make([]byte, 8)
			if n, err := io.ReadFull(c, buf[:3]); err != nil || string(buf[:n]) != "bye" {
				t.Fatalf("read %q, %v", buf[:n], err)
			}
			if !Closed(c) {
				t.Fatal("not closed with only the peer's end left")
			}
			if _, err := c.Read(buf); err != io.EOF {
				t.Fatalf("read at the end: %v, want EOF", err)
			}
			if !Closed(c) {
				t.Fatal("not closed once the end was read")
			}
		})
	}
}

// TestNoSocket: a connection with nothing to look into is neither
// pending nor closed, even closed itself.
func TestNoSocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	b.Close()
	if Pending(a) || Closed(a) {
		t.Fatalf("a connection with no socket under it: Pending %v, Closed %v; want both false", Pending(a), Closed(a))
	}
}

// TestPendingAllocs: the fast transport asks once per kept connection it
// takes, on the hot path.
func TestPendingAllocs(t *testing.T) {
	c, _ := pair(t)
	if n := testing.AllocsPerRun(100, func() { Pending(c) }); n != 0 {
		t.Fatalf("Pending allocates %v times per call, want 0", n)
	}
}

// BenchmarkPending is the fast transport's look at a kept connection.
func BenchmarkPending(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	rc := Wrap(c)
	b.ReportAllocs()
	for b.Loop() {
		if Pending(rc) {
			b.Fatal("pending")
		}
	}
}

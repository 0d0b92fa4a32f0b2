package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// answer reads n bytes from peer and writes back "ok:" and the number of
// the exchange, for rounds exchanges.
func answer(t *testing.T, peer net.Conn, n, rounds int) chan error {
	done := make(chan error, 1)
	go func() {
		buf, ok := make([]byte, n), []byte("ok:0")
		for i := range rounds {
			if _, err := io.ReadFull(peer, buf); err != nil {
				done <- err
				return
			}
			ok[3] = byte('0' + i%10)
			if _, err := peer.Write(ok); err != nil { // no allocation: TestExchangeAllocs counts the peer's too
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

// TestExchange: the answer comes back, however soon it arrives after the
// request (on loopback, often before the poller's wait begins): an
// answer whose readiness the wait missed would hang until the deadline.
func TestExchange(t *testing.T) {
	for _, tc := range []struct {
		name string
		conn func(*Conn) net.Conn
	}{
		{"raw", func(c *Conn) net.Conn { return c }},
		{"wrapped raw", func(c *Conn) net.Conn { return unwrapper{c} }},
		{"tcp", func(c *Conn) net.Conn { return c.TCPConn }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, peer := pair(t)
			c := tc.conn(raw)
			const rounds = 2000
			done := answer(t, peer, 3, rounds)
			buf := make([]byte, 64)
			for i := range rounds {
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				n, err := Exchange(c, []byte("GET"), buf)
				if err != nil {
					t.Fatalf("exchange %d: %v", i, err)
				}
				for n < 4 { // should the answer come in two segments (short read)
					m, err := c.Read(buf[n:])
					if err != nil {
						t.Fatalf("exchange %d, the rest: %v", i, err)
					}
					n += m
				}
				if want := "ok:" + string(rune('0'+i%10)); string(buf[:n]) != want {
					t.Fatalf("exchange %d: %q, want %q", i, buf[:n], want)
				}
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestExchangeUnasked: a connection with something to read is refused,
// and the request is not written.
func TestExchangeUnasked(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(peer *net.TCPConn)
	}{
		{"bytes", func(peer *net.TCPConn) { peer.Write([]byte("HTTP/1.1 408 Request Timeout\r\n\r\n")) }},
		{"close", func(peer *net.TCPConn) { peer.CloseWrite() }},
	} {
		for _, wrap := range []bool{false, true} {
			name := tc.name
			if wrap {
				name += " tcp"
			}
			t.Run(name, func(t *testing.T) {
				raw, peer := pair(t)
				var c net.Conn = raw
				if wrap {
					c = raw.TCPConn
				}
				tc.spoil(peer)
				eventually(t, c, true, "spoilt")
				_ = c.SetDeadline(time.Now().Add(5 * time.Second)) // a wait would be the bug: fail, not hang
				n, err := Exchange(c, []byte("GET / HTTP/1.1\r\n\r\n"), make([]byte, 64))
				if n != 0 || !errors.Is(err, ErrUnasked) {
					t.Fatalf("Exchange = %d, %v; want 0, ErrUnasked", n, err)
				}
				raw.Close()
				got, err := io.ReadAll(peer)
				if errors.Is(err, syscall.ECONNRESET) {
					err = nil // closed with the unasked bytes unread (Pending only looks)
				}
				if err != nil || len(got) > 0 {
					t.Fatalf("the peer got %q, %v: want nothing written", got, err)
				}
			})
		}
	}
}

// TestExchangeLarge: a request larger than the socket's buffers is
// written whole, the rest after a wait for room, and the answer read.
func TestExchangeLarge(t *testing.T) {
	c, peer := pair(t)
	req := make([]byte, 16<<20)
	for i := range req {
		req[i] = byte(i * 7)
	}
	done := make(chan error, 1)
	go func() {
		time.Sleep(20 * time.Millisecond) // let the buffers fill first
		got := make([]byte, len(req))
		if _, err := io.ReadFull(peer, got); err != nil {
			done <- err
			return
		}
		if !bytes.Equal(got, req) {
			done <- errors.New("the request arrived changed")
			return
		}
		_, err := peer.Write([]byte("done"))
		done <- err
	}()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 4)
	n, err := Exchange(c, req, buf)
	if err != nil || n == 0 || string(buf[:n]) != "done"[:n] {
		t.Fatalf("Exchange = %q, %v", buf[:n], err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestExchangeErrors: a deadline, a close, a reset: net.Conn's errors,
// and with a passed deadline nothing written.
func TestExchangeErrors(t *testing.T) {
	t.Run("deadline passed", func(t *testing.T) {
		c, peer := pair(t)
		_ = c.SetDeadline(time.Now().Add(-time.Second))
		_, err := Exchange(c, []byte("GET"), make([]byte, 8))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("err = %v, want a deadline", err)
		}
		c.Close()
		if got, _ := io.ReadAll(peer); len(got) > 0 {
			t.Fatalf("the peer got %q after a passed deadline", got)
		}
	})
	t.Run("no answer by the deadline", func(t *testing.T) {
		c, peer := pair(t)
		_ = c.SetDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := Exchange(c, []byte("GET"), make([]byte, 8))
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("err = %v, want a timeout", err)
		}
		buf := make([]byte, 3)
		if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "GET" {
			t.Fatalf("the peer got %q, %v; want the request", buf, err)
		}
	})
	t.Run("closed while waiting", func(t *testing.T) {
		c, _ := pair(t)
		go func() {
			time.Sleep(20 * time.Millisecond)
			c.Close()
		}()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := Exchange(c, []byte("GET"), make([]byte, 8))
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("err = %v, want net.ErrClosed", err)
		}
	})
	t.Run("the peer closes after the request", func(t *testing.T) {
		c, peer := pair(t)
		go func() {
			buf := make([]byte, 3)
			io.ReadFull(peer, buf)
			peer.Close()
		}()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		n, err := Exchange(c, []byte("GET"), make([]byte, 8))
		if n != 0 || err != io.EOF {
			t.Fatalf("Exchange = %d, %v; want 0, io.EOF", n, err)
		}
	})
	t.Run("the peer resets after the request", func(t *testing.T) {
		c, peer := pair(t)
		go func() {
			buf := make([]byte, 3)
			io.ReadFull(peer, buf)
			peer.SetLinger(0)
			peer.Close()
		}()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := Exchange(c, []byte("GET"), make([]byte, 8))
		var oe *net.OpError
		if !errors.Is(err, syscall.ECONNRESET) || !errors.As(err, &oe) || oe.Op != "read" {
			t.Fatalf("err = %#v, want a read *net.OpError of ECONNRESET, as net.Conn's", err)
		}
	})
	t.Run("write error", func(t *testing.T) {
		c, _ := pair(t)
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := Exchange(c, []byte("GET"), make([]byte, 8))
		var oe *net.OpError
		if !errors.Is(err, syscall.EPIPE) || !errors.As(err, &oe) || oe.Op != "write" {
			t.Fatalf("err = %#v, want a write *net.OpError of EPIPE, as net.Conn's", err)
		}
	})
	t.Run("empty buffer", func(t *testing.T) {
		c, _ := pair(t)
		if _, err := Exchange(c, []byte("GET"), nil); err != io.ErrShortBuffer {
			t.Fatalf("err = %v, want io.ErrShortBuffer", err)
		}
	})
}

// TestExchangeNotTCP: without raw access, Exchange is Write and Read.
func TestExchangeNotTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		buf := make([]byte, 3)
		io.ReadFull(b, buf)
		b.Write([]byte("ok"))
	}()
	buf := make([]byte, 8)
	n, err := Exchange(a, []byte("GET"), buf)
	if err != nil || string(buf[:n]) != "ok" {
		t.Fatalf("Exchange = %q, %v", buf[:n], err)
	}
}

// TestExchangeAllocs: the fast transport makes one per request.
func TestExchangeAllocs(t *testing.T) {
	c, peer := pair(t)
	done := answer(t, peer, 3, 101)
	buf := make([]byte, 8)
	req := []byte("GET")
	if n := testing.AllocsPerRun(100, func() {
		if _, err := Exchange(c, req, buf); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("Exchange allocates %v times per call, want 0", n)
	}
	c.Close()
	<-done
}

// BenchmarkExchange is a request and its answer on loopback, by Exchange
// and by what it replaces: Pending, Write and Read.
func BenchmarkExchange(b *testing.B) {
	for _, exchange := range []bool{true, false} {
		name := "exchange"
		if !exchange {
			name = "pending-write-read"
		}
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				buf, ok := make([]byte, 3), []byte("ok")
				for {
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					if _, err := c.Write(ok); err != nil {
						return
					}
				}
			}()
			nc, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			c := Wrap(nc)
			defer c.Close()
			req, buf := []byte("GET"), make([]byte, 8)
			b.ReportAllocs()
			for b.Loop() {
				if exchange {
					if _, err := Exchange(c, req, buf); err != nil {
						b.Fatal(err)
					}
					continue
				}
				if Pending(c) {
					b.Fatal("pending")
				}
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Read(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

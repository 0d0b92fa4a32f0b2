package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pair returns a raw connection and the plain other end of it.
func pair(t *testing.T) (*Conn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	rc, ok := Wrap(c).(*Conn)
	if !ok {
		t.Fatalf("Wrap(%T) is not raw", c)
	}
	t.Cleanup(func() { rc.Close(); peer.Close() })
	return rc, peer.(*net.TCPConn)
}

func TestReadWrite(t *testing.T) {
	c, peer := pair(t)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("peer read %q, %v", buf, err)
	}
	if _, err := peer.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "world" {
		t.Fatalf("raw read %q, %v", buf, err)
	}
	if n, err := c.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty read: %d, %v", n, err)
	}
	if n, err := c.Write(nil); n != 0 || err != nil {
		t.Fatalf("empty write: %d, %v", n, err)
	}
}

// TestLargeWrite fills the socket buffers so that write(2) returns
// EAGAIN part way: Write must wait for room and write every byte once.
func TestLargeWrite(t *testing.T) {
	c, peer := pair(t)
	want := make([]byte, 16<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(20 * time.Millisecond) // let the buffers fill first
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	n, err := c.Write(want)
	if err != nil || n != len(want) {
		t.Fatalf("Write = %d, %v; want %d", n, err, len(want))
	}
	c.CloseWrite()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("peer got %d bytes, not the %d written", len(b), len(want))
	}
}

func TestEOF(t *testing.T) {
	c, peer := pair(t)
	peer.Write([]byte("x"))
	peer.CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "x" {
		t.Fatalf("ReadAll = %q, %v", b, err)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read after EOF: %d, %v", n, err)
	}
}

// TestErrors: the errors are net.Conn's, so that callers that look for a
// timeout, a closed connection or a reset find them.
func TestErrors(t *testing.T) {
	t.Run("deadline", func(t *testing.T) {
		c, _ := pair(t)
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("read past the deadline: %v", err)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "read" || oe.Net != "tcp" || oe.Addr == nil || oe.Source == nil {
			t.Fatalf("error %#v is not net.Conn's read error", err)
		}
		c.SetWriteDeadline(time.Now().Add(-time.Second))
		if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write past the deadline: %v", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		c, _ := pair(t)
		c.Close()
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read of a closed connection: %v", err)
		}
		if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("write to a closed connection: %v", err)
		}
	})
	t.Run("closed while reading", func(t *testing.T) {
		c, _ := pair(t)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 1))
			errc <- err
		}()
		time.Sleep(10 * time.Millisecond) // usually parked in the poller by now; either way the read must end
		c.Close()
		if err := <-errc; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read interrupted by Close: %v", err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		c, peer := pair(t)
		peer.SetLinger(0)
		peer.Close()
		var err error
		for i := 0; i < 100 && err == nil; i++ {
			_, err = c.Write([]byte("x"))
			if err == nil {
				time.Sleep(time.Millisecond)
			}
		}
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("write to a reset connection: %v", err)
		}
		var se *os.SyscallError
		if !errors.As(err, &se) || se.Syscall != "write" {
			t.Fatalf("error %v does not name write(2)", err)
		}
	})
}

// TestConcurrent reads and writes from several goroutines at once, as
// net.Conn allows (run with -race).
func TestConcurrent(t *testing.T) {
	c, peer := pair(t)
	const n, size = 8, 64 << 10
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Write(bytes.Repeat([]byte{'a'}, size))
		}()
	}
	go func() { io.Copy(peer, peer) }() // echo
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	total := 0
	var rwg sync.WaitGroup
	var mu sync.Mutex
	for i := 0; i < 2; i++ {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for {
				mu.Lock()
				done := total >= n*size
				mu.Unlock()
				if done {
					c.SetReadDeadline(time.Unix(1, 0)) // wake the other reader
					return
				}
				b := make([]byte, 4096)
				k, err := c.Read(b)
				for _, x := range b[:k] {
					if x != 'a' {
						t.Errorf("read %q", x)
						return
					}
				}
				mu.Lock()
				total += k
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	rwg.Wait()
	if total != n*size {
		t.Fatalf("read back %d bytes, want %d", total, n*size)
	}
}

func TestOff(t *testing.T) {
	Off = true
	defer func() { Off = false }()
	c, err := net.Dial("tcp", listen(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if w := Wrap(c); w != c {
		t.Fatalf("with Off, Wrap returned %T", w)
	}
}

func listen(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	return ln.Addr().String()
}

// BenchmarkPingPong is one byte each way, raw and with net.Conn's calls.
func BenchmarkPingPong(b *testing.B) {
	for _, raw := range []bool{true, false} {
		name := "raw"
		if !raw {
			name = "std"
		}
		b.Run(name, func(b *testing.B) {
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			defer ln.Close()
			go func() {
				s, err := ln.Accept()
				if err != nil {
					return
				}
				io.Copy(s, s)
			}()
			c, _ := net.Dial("tcp", ln.Addr().String())
			if raw {
				c = Wrap(c)
			}
			defer c.Close()
			p := []byte{1}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c.Write(p)
				c.Read(p)
			}
		})
	}
}

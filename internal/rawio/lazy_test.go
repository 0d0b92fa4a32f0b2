package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// bufs counts ReadLazy's buffers: how many it took, and gave back.
type bufs struct{ got, put atomic.Int32 }

func (b *bufs) Get() []byte { b.got.Add(1); return make([]byte, 64) }
func (b *bufs) Put([]byte)  { b.put.Add(1) }

// held is how many buffers the reader holds.
func (b *bufs) held() int32 { return b.got.Load() - b.put.Load() }

// waitFor polls cond, which a goroutine makes true, for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

type lazyResult struct {
	b   []byte
	n   int
	err error
}

// startLazy runs c.ReadLazy with bs's buffers on a goroutine of its own.
func startLazy(c *Conn, bs *bufs) <-chan lazyResult {
	done := make(chan lazyResult, 1)
	go func() {
		b, n, err := c.ReadLazy(bs)
		done <- lazyResult{b, n, err}
	}()
	return done
}

func TestReadLazyWaitsWithoutBuffer(t *testing.T) {
	c, peer := pair(t)
	var bs bufs
	done := startLazy(c, &bs)
	// Nothing to read: the read that found nothing gave its buffer back
	// before the wait.
	waitFor(t, "the first read's buffer back", func() bool { return bs.put.Load() >= 1 })
	if h := bs.held(); h != 0 {
		t.Fatalf("waiting with %d buffers held", h)
	}
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || string(r.b[:r.n]) != "hello" {
		t.Fatalf("ReadLazy = %q, %v", r.b[:r.n], r.err)
	}
	if h := bs.held(); h != 1 {
		t.Fatalf("after the read %d buffers held, want the one returned", h)
	}
}

func TestReadLazyReady(t *testing.T) {
	c, peer := pair(t)
	if _, err := peer.Write([]byte("now")); err != nil {
		t.Fatal(err)
	}
	var bs bufs
	waitFor(t, "the bytes to arrive", func() bool { return Pending(c) })
	b, n, err := c.ReadLazy(&bs)
	if err != nil || string(b[:n]) != "now" {
		t.Fatalf("ReadLazy = %q, %v", b[:n], err)
	}
	if bs.got.Load() != 1 || bs.put.Load() != 0 {
		t.Fatalf("bytes waiting: %d buffers got, %d given back; want one read into one buffer", bs.got.Load(), bs.put.Load())
	}
}

func TestReadLazyEnds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		end   func(c *Conn, peer *net.TCPConn)
		check func(error) bool
	}{
		{"peer closes", func(_ *Conn, peer *net.TCPConn) { peer.Close() }, func(err error) bool { return err == io.EOF }},
		{"deadline", func(c *Conn, _ *net.TCPConn) { c.SetReadDeadline(time.Now()) },
			func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }},
		{"closed", func(c *Conn, _ *net.TCPConn) { c.Close() }, func(err error) bool { return errors.Is(err, net.ErrClosed) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, peer := pair(t)
			var bs bufs
			done := startLazy(c, &bs)
			waitFor(t, "the wait", func() bool { return bs.put.Load() >= 1 })
			tc.end(c, peer)
			r := <-done
			if r.b != nil || r.n != 0 || !tc.check(r.err) {
				t.Fatalf("ReadLazy = %v, %d, %v", r.b, r.n, r.err)
			}
			if _, ok := r.err.(*net.OpError); r.err != io.EOF && !ok {
				t.Fatalf("error %T, want *net.OpError as net.Conn's", r.err)
			}
			if h := bs.held(); h != 0 {
				t.Fatalf("%d buffers held after an error", h)
			}
		})
	}
}

// A connection without raw reads: its Read, into a buffer got first.
func TestReadLazyFallback(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go b.Write([]byte("piped"))
	var bs bufs
	buf, n, err := ReadLazy(a, &bs)
	if err != nil || string(buf[:n]) != "piped" || bs.held() != 1 {
		t.Fatalf("ReadLazy = %q, %v, %d held", buf[:n], err, bs.held())
	}
	b.Close()
	buf, n, err = ReadLazy(a, &bs)
	if buf != nil || n != 0 || err != io.EOF || bs.held() != 1 {
		t.Fatalf("at the end: %v, %d, %v, %d held; want nil, 0, EOF and the buffer back", buf, n, err, bs.held())
	}
	// A reader that returns nothing once, then bytes with an error: read
	// again, as bufio does, and the error comes with the bytes.
	var zs bufs
	buf, n, err = ReadLazy(&stutter{}, &zs)
	if string(buf[:n]) != "late" || err != io.EOF || zs.held() != 1 {
		t.Fatalf("ReadLazy(stutter) = %q, %v, %d held; want late, EOF, 1", buf[:n], err, zs.held())
	}
	// Through the package function, a raw connection reads lazily.
	c, peer := pair(t)
	go peer.Write([]byte("raw"))
	var rs bufs
	if buf, n, err := ReadLazy(net.Conn(c), &rs); err != nil || string(buf[:n]) != "raw" {
		t.Fatalf("ReadLazy(raw) = %q, %v", buf[:n], err)
	}
}

// stutter's first Read returns nothing and no error, its second bytes and
// io.EOF.
type stutter struct{ reads int }

func (s *stutter) Read(p []byte) (int, error) {
	s.reads++
	if s.reads == 1 {
		return 0, nil
	}
	return copy(p, "late"), io.EOF
}

package outbound_test

// Issue #14, bad input: HTTP/2 clients that flood the sidecar's outbound
// listener with control frames (SETTINGS, PING) or with streams they
// reset at once ("rapid reset", CVE-2023-44487). Go's HTTP/2 server
// bounds each (docs/grpc.md, Limits); these tests prove the bounds hold
// through the sidecar, with figures.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/outbound"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/health"
)

// heapPeak runs f while sampling the heap every millisecond and returns
// the most it held above what it held before f, as
// internal/heapwatch.Peak does, but read from runtime/metrics, which
// does not stop the world: heapwatch's runtime.ReadMemStats every
// millisecond, on a loaded 2-core machine, slowed the sidecar under a
// flood to a few thousand frames a second.
func heapPeak(f func()) uint64 {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	runtime.GC()
	base := read()
	var peak atomic.Uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			if v := read(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	<-done
	if v := read(); v > peak.Load() {
		peak.Store(v)
	}
	if peak.Load() < base {
		return 0
	}
	return peak.Load() - base
}

// dialNoRead opens an h2c connection (preface and SETTINGS sent) with a
// small receive buffer; the test never reads from it while it floods,
// so what the sidecar answers backs up in its own send queue instead of
// in the kernel's buffers.
func dialNoRead(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := http2.NewFramer(c, nil).WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c
}

// onFreshConn runs attempt on a new dialNoRead connection, and again on
// another (three in all) when it fails on a connection the kernel
// stalled rather than the sidecar. A client that reads nothing fills its
// receive queue with the sidecar's answers, in small segments; when the
// kernel can no longer collapse them it drops what arrives, the
// sidecar's acknowledgements of the client's data with it, and the
// client's retransmissions back off to tens of seconds, while the
// sidecar has read all it got: seen about once in 30 runs, three copies
// of the test at once under -race. Such a connection shows drops or
// retransmissions of its own (on loopback nothing else loses a
// segment); a failure on one that shows neither fails at once.
func onFreshConn(t *testing.T, addr string, attempt func(net.Conn) error) {
	t.Helper()
	for try := 1; ; try++ {
		c := dialNoRead(t, addr)
		err := attempt(c)
		if err == nil {
			return
		}
		drops, retrans := kernelLosses(t, c)
		if drops+retrans == 0 || try == 3 {
			t.Fatalf("%v (try %d; arriving segments the kernel dropped at the client: %d, segments it sent again: %d)", err, try, drops, retrans)
		}
		t.Logf("try %d: %v; the kernel dropped %d segments arriving at the client and it sent %d again: a TCP stall, again on a new connection",
			try, err, drops, retrans)
		c.Close()
	}
}

// kernelLosses is how many segments arriving at c the kernel dropped
// (Linux's SO_MEMINFO, ss -m's "d" field) and how many c sent again
// (TCP_INFO's total retransmissions).
func kernelLosses(t *testing.T, c net.Conn) (drops, retrans uint32) {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var m [unix.SK_MEMINFO_VARS]uint32
	var errno syscall.Errno
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		l := uint32(unsafe.Sizeof(m))
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&m)), uintptr(unsafe.Pointer(&l)), 0)
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		t.Fatal(err)
	}
	if errno != 0 {
		t.Fatalf("getsockopt SO_MEMINFO: %v", errno)
	}
	if ierr != nil {
		t.Fatalf("getsockopt TCP_INFO: %v", ierr)
	}
	return m[unix.SK_MEMINFO_DROPS], info.Total_retrans
}

// flood writes frames with write until the sidecar closes the
// connection, within passes or max frames are written (0: no maximum);
// it returns the frames written and the write's error. mid runs once,
// after the first 5,000 frames.
func flood(c net.Conn, within time.Duration, max int, write func(*http2.Framer, int) error, mid func()) (int, error) {
	_ = c.SetWriteDeadline(time.Now().Add(within))
	defer c.SetWriteDeadline(time.Time{})
	bw := bufio.NewWriterSize(c, 64<<10)
	fr := http2.NewFramer(bw, nil)
	for n := 0; ; n++ {
		if n == max && max > 0 {
			return n, bw.Flush()
		}
		if n == 5000 && mid != nil {
			mid()
		}
		if err := write(fr, n); err != nil {
			return n, err
		}
		if n%1000 == 999 {
			if err := bw.Flush(); err != nil {
				return n + 1, err
			}
		}
	}
}

// closedBy reads what is left on c after a flood: the connection must be
// at its end (EOF or reset, not a read timeout); a GOAWAY in it must be
// ENHANCE_YOUR_CALM. It returns the GOAWAY's code, or -1 when none came.
func closedBy(t *testing.T, c net.Conn) int {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got bytes.Buffer
	_, err := io.Copy(&got, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the connection is still open 10 s after the flood (%d bytes read)", got.Len())
	}
	code := -1
	fr := http2.NewFramer(nil, &got)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			break
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			code = int(ga.ErrCode)
			if ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM", ga.ErrCode)
			}
		}
	}
	return code
}

// TestHTTP2ControlFlood: a client that floods the sidecar with control
// frames and does not read the answers cannot make it hold them: Go's
// server coalesces the acknowledgements of SETTINGS (one pending at a
// time, the connection serves on), and closes a connection on which
// more than 10,000 PING acknowledgements wait to be sent. The sidecar's
// heap stays bounded and it serves other connections during and after.
func TestHTTP2ControlFlood(t *testing.T) {
	addr := startGRPC(t, health.NewServer())
	sc := startSidecar(t, "", resolve(addr, healthSvc))
	other := grpcClient(t, sc, healthSvc)
	if _, err := check(other, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	const maxHeap = 32 << 20

	t.Run("SETTINGS", func(t *testing.T) {
		// A fixed number of frames: more acknowledgements than the
		// kernel's buffers hold, were each one queued.
		const frames = 300_000
		var n, acks int
		var midErr error
		var took time.Duration
		var peak uint64
		onFreshConn(t, sc.Addr, func(c net.Conn) error {
			start := time.Now()
			acks = 0
			var err error
			peak = heapPeak(func() {
				n, err = flood(c, 60*time.Second, frames, func(fr *http2.Framer, _ int) error { return fr.WriteSettings() },
					func() { _, midErr = check(other, 5*time.Second) })
				if err != nil {
					err = fmt.Errorf("after %d frames: %w", n, err)
					return
				}
				// The same connection still serves: a request on it is
				// answered, after the sidecar read every SETTINGS frame
				// (it reads frames in order) and sent what acknowledgements
				// it sends.
				fr := http2.NewFramer(c, c)
				var hb bytes.Buffer
				enc := hpack.NewEncoder(&hb)
				for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", healthSvc}} {
					_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
				}
				if err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
					return
				}
				_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
				for answered := false; !answered; {
					f, rerr := fr.ReadFrame()
					if rerr != nil {
						err = fmt.Errorf("after %d SETTINGS acknowledgements: %w, want the answer to stream 1", acks, rerr)
						return
					}
					switch f := f.(type) {
					case *http2.SettingsFrame:
						if f.IsAck() {
							acks++
						}
					case *http2.HeadersFrame:
						answered = f.StreamID == 1
					case *http2.GoAwayFrame:
						err = fmt.Errorf("GOAWAY %v", f.ErrCode)
						return
					}
				}
			})
			took = time.Since(start)
			return err
		})
		t.Logf("SETTINGS flood: %d frames read and a request answered in %v, %d acknowledgements sent, heap peak +%.1f MiB; the connection serves on",
			n, took.Round(time.Millisecond), acks, float64(peak)/(1<<20))
		if acks >= n {
			t.Errorf("%d acknowledgements for %d frames: not coalesced", acks, n)
		}
		if peak > maxHeap {
			t.Errorf("heap peak +%d bytes during the flood, want at most %d", peak, maxHeap)
		}
		if midErr != nil {
			t.Errorf("a call on another connection during the flood: %v", midErr)
		}
	})

	t.Run("PING", func(t *testing.T) {
		var n int
		var midErr error
		var took time.Duration
		var peak uint64
		var c net.Conn
		onFreshConn(t, sc.Addr, func(conn net.Conn) error {
			c = conn
			start := time.Now()
			var err error
			peak = heapPeak(func() {
				// The sidecar closes after 400,000-500,000 frames here,
				// in 2-6 s (-race, three copies at once).
				n, err = flood(c, time.Minute, 0, func(fr *http2.Framer, n int) error {
					return fr.WritePing(false, [8]byte{byte(n), byte(n >> 8), byte(n >> 16)})
				}, func() { _, midErr = check(other, 5*time.Second) })
			})
			took = time.Since(start)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return fmt.Errorf("%d PING frames in 1 min and the connection is still open", n)
			}
			if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
				return fmt.Errorf("after %d frames: %v, want the connection closed by the sidecar", n, err)
			}
			return nil
		})
		code := closedBy(t, c)
		t.Logf("PING flood: connection closed after %d frames in %v (GOAWAY code %d, -1: none), heap peak +%.1f MiB",
			n, took.Round(time.Millisecond), code, float64(peak)/(1<<20))
		if peak > maxHeap {
			t.Errorf("heap peak +%d bytes during the flood, want at most %d", peak, maxHeap)
		}
		if midErr != nil {
			t.Errorf("a call on another connection during the flood: %v", midErr)
		}
	})

	if _, err := check(other, 5*time.Second); err != nil {
		t.Errorf("a call on another connection after the floods: %v", err)
	}
}

// TestHTTP2RapidReset: a client that opens streams and resets each at
// once ("rapid reset", CVE-2023-44487) cannot make the sidecar run more
// than H2MaxConcurrentStreams handlers for it, nor hold more than that
// many requests at the upstream; the sidecar's heap stays bounded and it
// serves other connections.
func TestHTTP2RapidReset(t *testing.T) {
	var hits, inFlight, maxInFlight atomic.Int64
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	up := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
		}
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})}
	uln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = up.Serve(uln) }()
	t.Cleanup(func() { up.Close() })
	const hang = "hang-service:80"
	addr := startGRPC(t, health.NewServer())
	sc := startSidecar(t, "", map[string]string{hang: uln.Addr().String(), healthSvc: addr})
	other := grpcClient(t, sc, healthSvc)
	if _, err := check(other, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	const streams = 20_000
	c, err := net.Dial("tcp", sc.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	// The client reads everything the sidecar sends, for the GOAWAY.
	var mu sync.Mutex
	var goaway *http2.GoAwayFrame
	var readErr error
	rstFromServer := 0
	readDone := make(chan struct{})
	marker := [8]byte{'m', 'a', 'r', 'k', 'e', 'r'}
	pinged := make(chan struct{})
	go func() {
		defer close(readDone)
		fr := http2.NewFramer(nil, c)
		for {
			f, err := fr.ReadFrame()
			mu.Lock()
			if err != nil {
				readErr = err
				mu.Unlock()
				return
			}
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				if goaway == nil {
					goaway = f
				}
			case *http2.RSTStreamFrame:
				rstFromServer++
			case *http2.PingFrame:
				if f.IsAck() && f.Data == marker {
					close(pinged)
				}
			}
			mu.Unlock()
		}
	}()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", hang}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	block := hb.Bytes()
	var sent int
	var werr error
	// The goroutines of the process (the sidecar's handlers among them),
	// sampled through the flood.
	baseG := runtime.NumGoroutine()
	var maxG atomic.Int64
	stopG := make(chan struct{})
	doneG := make(chan struct{})
	go func() {
		defer close(doneG)
		for {
			if g := int64(runtime.NumGoroutine()); g > maxG.Load() {
				maxG.Store(g)
			}
			select {
			case <-stopG:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	start := time.Now()
	peak := heapPeak(func() {
		_ = c.SetWriteDeadline(time.Now().Add(60 * time.Second))
		bw := bufio.NewWriterSize(c, 64<<10)
		fr := http2.NewFramer(bw, nil)
		if werr = fr.WriteSettings(); werr != nil {
			return
		}
		for sent = 0; sent < streams; sent++ {
			id := uint32(2*sent + 1)
			if werr = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true, EndStream: true}); werr != nil {
				return
			}
			if werr = fr.WriteRSTStream(id, http2.ErrCodeCancel); werr != nil {
				return
			}
			if sent%500 == 499 {
				if werr = bw.Flush(); werr != nil {
					return
				}
			}
		}
		// A PING after the flood: its acknowledgement comes once the
		// sidecar has read every frame before it (it reads in order).
		if werr = fr.WritePing(false, marker); werr != nil {
			return
		}
		if werr = bw.Flush(); werr != nil {
			return
		}
		select {
		case <-pinged:
		case <-readDone:
		case <-time.After(30 * time.Second):
			t.Error("no PING acknowledgement nor end of the connection 30 s after the flood")
			return
		}
		// Every request that reached the upstream is canceled there.
		if !proxytest.Poll(10*time.Second, 5*time.Millisecond, func() bool { return inFlight.Load() == 0 }) {
			t.Errorf("%d requests still in flight at the upstream 10 s after the flood", inFlight.Load())
		}
	})
	took := time.Since(start)
	close(stopG)
	<-doneG
	mu.Lock()
	t.Logf("rapid reset: %d streams sent and read (write error %v) in %v; GOAWAY %v, read %v, %d RST_STREAM from the sidecar; upstream: %d requests, at most %d at once, %d still in flight; goroutines at most +%d; heap peak +%.1f MiB",
		sent, werr, took.Round(time.Millisecond), goaway, readErr, rstFromServer, hits.Load(), maxInFlight.Load(), inFlight.Load(), maxG.Load()-int64(baseG), float64(peak)/(1<<20))
	mu.Unlock()
	if werr != nil {
		t.Errorf("writing the flood: %v", werr)
	}
	if goaway != nil && goaway.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %v, want none or ENHANCE_YOUR_CALM", goaway.ErrCode)
	}
	if m := maxInFlight.Load(); m > outbound.H2MaxConcurrentStreams {
		t.Errorf("the upstream held %d requests at once, want at most %d", m, outbound.H2MaxConcurrentStreams)
	}
	// Each handler of the sidecar is a goroutine with a few more for its
	// upstream stream; without Go's bound on handlers (4 queued per
	// stream slot), 20,000 streams would be thousands of goroutines.
	if g := maxG.Load() - int64(baseG); g > 4*outbound.H2MaxConcurrentStreams {
		t.Errorf("goroutines grew by %d during the flood, want at most %d", g, 4*outbound.H2MaxConcurrentStreams)
	}
	if peak > 32<<20 {
		t.Errorf("heap peak +%d bytes during the flood, want at most %d", peak, 32<<20)
	}
	if _, err := check(other, 5*time.Second); err != nil {
		t.Errorf("a call on another connection after the flood: %v", err)
	}
}

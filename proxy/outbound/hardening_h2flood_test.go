package outbound_test

// Issue #14, bad input: HTTP/2 clients that flood the sidecar's outbound
// listener with control frames (SETTINGS, PING) or with streams they
// reset at once ("rapid reset", CVE-2023-44487). Go's HTTP/2 server
// bounds each (docs/grpc.md, Limits); these tests prove the bounds hold
// through the sidecar, with figures.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/outbound"
	"github.com/minimesh/minimesh/proxy/sidecar"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
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
// another (three in all) when it timed out on a connection the kernel
// stalled, not the sidecar. A client that reads nothing fills its
// receive queue with the sidecar's answers in small segments; when the
// kernel can no longer collapse them it drops what arrives, the
// sidecar's acknowledgements and window updates with it, and the client
// waits out back-off, tens of seconds and growing, for a window the
// sidecar opened long before: it read all it got. Seen about once in 30
// runs, three copies of the test at once under -race (ss: the client's
// send queue megabytes, the sidecar's receive queue empty, both ends in
// back-off). Any other failure (an error that is no timeout, or a
// sidecar that left bytes unread) fails at once, as does a third stall.
func onFreshConn(t *testing.T, addr string, attempt func(net.Conn) error) {
	t.Helper()
	for try := 1; ; try++ {
		c := dialNoRead(t, addr)
		err := attempt(c)
		if err == nil {
			return
		}
		var ne net.Error
		stalled, queues := tcpStall(c)
		if !errors.As(err, &ne) || !ne.Timeout() || !stalled || try == 3 {
			t.Fatalf("try %d: %v (%s)", try, err, queues)
		}
		t.Logf("try %d: %v; %s: a TCP stall, again on a new connection", try, err, queues)
		c.Close()
	}
}

// tcpStall reports whether c, the client's end of a loopback connection
// to the sidecar, has bytes the sidecar's kernel has not acknowledged
// while the sidecar has read all its kernel received: the kernel's stall,
// not the sidecar's (onFreshConn). It reads both ends' queues from
// /proc/net/tcp, and says what it found.
func tcpStall(c net.Conn) (bool, string) {
	local, remote := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return false, err.Error()
	}
	client, sidecar := [2]string{procAddr(local), procAddr(remote)}, [2]string{procAddr(remote), procAddr(local)}
	sent, unread := int64(-1), int64(-1)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		tx, rx, _ := strings.Cut(f[4], ":")
		switch [2]string{f[1], f[2]} {
		case client:
			sent, _ = strconv.ParseInt(tx, 16, 64)
		case sidecar:
			unread, _ = strconv.ParseInt(rx, 16, 64)
		}
	}
	return sent > 0 && unread == 0, fmt.Sprintf("the client's bytes not yet acknowledged: %d, the sidecar's unread: %d (-1: not found)", sent, unread)
}

// procAddr spells an IPv4 address as /proc/net/tcp does: the address
// as a host-order word, the port, in hex.
func procAddr(a *net.TCPAddr) string {
	ip := a.IP.To4()
	if ip == nil {
		return ""
	}
	return fmt.Sprintf("%08X:%04X", binary.NativeEndian.Uint32(ip), a.Port)
}

// errStillOpen is flood's end when its time is up and the connection
// still takes frames.
var errStillOpen = errors.New("the connection is still open")

// stallAfter is how long flood waits for one batch of frames to go out
// before it gives up with a timeout: the connection no longer takes them.
const stallAfter = 20 * time.Second

// flood writes frames with write until the sidecar closes the
// connection, max frames are written (0: no maximum), a batch of them
// has not gone out within stallAfter (a timeout), or within has passed
// (errStillOpen); it returns the frames written and the write's error.
// mid runs once, after the first 5,000 frames.
func flood(c net.Conn, within time.Duration, max int, write func(*http2.Framer, int) error, mid func()) (int, error) {
	start := time.Now()
	_ = c.SetWriteDeadline(start.Add(stallAfter))
	defer c.SetWriteDeadline(time.Time{})
	bw := bufio.NewWriterSize(c, 64<<10)
	fr := http2.NewFramer(bw, nil)
	for n := 0; ; n++ {
		if n == max && max > 0 {
			return n, bw.Flush()
		}
		if n == 5000 && mid != nil {
			mid()
			_ = c.SetWriteDeadline(time.Now().Add(stallAfter))
		}
		if err := write(fr, n); err != nil {
			return n, err
		}
		if n%1000 == 999 {
			if err := bw.Flush(); err != nil {
				return n + 1, err
			}
			if time.Since(start) > within {
				return n + 1, errStillOpen
			}
			_ = c.SetWriteDeadline(time.Now().Add(stallAfter))
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
				// in 2-6 s (-race, three copies at once); a minute of
				// frames taken and the connection open fails.
				n, err = flood(c, time.Minute, 0, func(fr *http2.Framer, n int) error {
					return fr.WritePing(false, [8]byte{byte(n), byte(n >> 8), byte(n >> 16)})
				}, func() { _, midErr = check(other, 5*time.Second) })
			})
			took = time.Since(start)
			if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
				return fmt.Errorf("after %d PING frames in %v: %w, want the connection closed by the sidecar", n, took.Round(time.Second), err)
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
// once ("rapid reset", CVE-2023-44487) causes the sidecar bounded work,
// counted, not timed: the flood is a fixed number of streams and the
// test waits for the sidecar to have read it, however long a loaded
// machine takes, failing only when it stops reading (rapidReset). Two
// defences, each proved where it acts:
//
//   - through the sidecar: its handler ends when its stream is reset and
//     cancels the request it sent upstream, so a stream costs at most one
//     upstream request, canceled; few run at once, never more than
//     H2MaxConcurrentStreams, and the sidecar serves another connection
//     during and after the flood;
//   - with handlers that outlive their streams (the sidecar's do not, so
//     a stand-in handler that ignores the reset, on a server with the
//     sidecar's HTTP/2 settings, ServerHTTP2): Go's server runs at most
//     SETTINGS_MAX_CONCURRENT_STREAMS of them per connection, queues
//     1,000 more, then answers GOAWAY ENHANCE_YOUR_CALM. Without that
//     bound every stream of the flood would start one.
//
// Each part fails when its defence is removed: the sidecar's requests
// sent upstream with a context its client's reset does not cancel, or
// Go's bound on handlers (or MaxConcurrentStreams) lifted (docs/grpc.md,
// Limits).
func TestHTTP2RapidReset(t *testing.T) {
	t.Run("through the sidecar", func(t *testing.T) {
		// An upstream that holds each request until the sidecar cancels it
		// (or the test ends): one the sidecar left uncanceled stays in
		// flight, it does not time out on its own.
		var hits, inFlight, maxInFlight atomic.Int64
		release := make(chan struct{})
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		up := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			storeMax(&maxInFlight, n)
			select {
			case <-r.Context().Done():
			case <-release:
			}
		})}
		uln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = up.Serve(uln) }()
		t.Cleanup(func() { close(release); up.Close() })
		const hang = "hang-service:80"
		addr := startGRPC(t, health.NewServer())
		// No request body timeout: its timer (30 s) would end, later, the
		// handlers of streams whose reset the sidecar did not act on.
		sc := startSidecar(t, "", map[string]string{hang: uln.Addr().String(), healthSvc: addr},
			func(c *sidecar.Config) { c.RequestBodyTimeout = -1 })
		other := grpcClient(t, sc, healthSvc)
		if _, err := check(other, 30*time.Second); err != nil {
			t.Fatal(err)
		}

		const streams = 20_000
		// The goroutines of the process (the sidecar's handlers among
		// them), sampled through the flood.
		baseG := runtime.NumGoroutine()
		var maxG atomic.Int64
		stopG, doneG := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(doneG)
			for {
				storeMax(&maxG, int64(runtime.NumGoroutine()))
				select {
				case <-stopG:
					return
				case <-time.After(time.Millisecond):
				}
			}
		}()
		var res resetFlood
		var midErr error
		var midTook time.Duration
		midDone := make(chan struct{})
		peak := heapPeak(func() {
			res = rapidReset(t, sc.Addr, hang, streams, func() {
				// A call on another connection while the sidecar reads the
				// flood (it has the first batch, and the kernel the rest).
				go func() {
					defer close(midDone)
					midTook, midErr = check(other, 30*time.Second)
				}()
			})
		})
		close(stopG)
		<-doneG
		// Every request that reached the upstream is canceled there: the
		// sidecar has read every reset (the last PING's acknowledgement
		// came after them), or closed the connection.
		canceled := proxytest.Poll(60*time.Second, 5*time.Millisecond, func() bool { return inFlight.Load() == 0 })
		t.Logf("rapid reset: %v; upstream: %d requests, at most %d at once, %d still in flight; goroutines at most +%d; heap peak +%.1f MiB; a call on another connection during the flood took %v",
			res, hits.Load(), maxInFlight.Load(), inFlight.Load(), maxG.Load()-int64(baseG), float64(peak)/(1<<20), midTook.Round(time.Millisecond))
		res.check(t, false)
		if !canceled {
			t.Errorf("%d requests still in flight at the upstream 60 s after the flood: the sidecar did not cancel the requests of the streams its client reset", inFlight.Load())
		}
		if h := hits.Load(); h > int64(res.sent) {
			t.Errorf("%d requests reached the upstream for %d streams, want at most one a stream", h, res.sent)
		}
		if m := maxInFlight.Load(); m > outbound.H2MaxConcurrentStreams {
			t.Errorf("the upstream held %d requests at once, want at most %d", m, outbound.H2MaxConcurrentStreams)
		}
		// Each handler of the sidecar is a goroutine with a few more for
		// its upstream stream: thousands, were handlers left running.
		if g := maxG.Load() - int64(baseG); g > 4*outbound.H2MaxConcurrentStreams {
			t.Errorf("goroutines grew by %d during the flood, want at most %d", g, 4*outbound.H2MaxConcurrentStreams)
		}
		if peak > 32<<20 {
			t.Errorf("heap peak +%d bytes during the flood, want at most %d", peak, 32<<20)
		}
		<-midDone
		if midErr != nil {
			t.Errorf("a call on another connection during the flood: %v", midErr)
		}
		if _, err := check(other, 30*time.Second); err != nil {
			t.Errorf("a call on another connection after the flood: %v", err)
		}
	})

	t.Run("handlers that outlive their streams", func(t *testing.T) {
		var started, running, maxRunning atomic.Int64
		release := make(chan struct{})
		srv := &http.Server{
			Protocols: outbound.ServerProtocols(),
			HTTP2:     outbound.ServerHTTP2(),
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				started.Add(1)
				defer running.Add(-1)
				storeMax(&maxRunning, running.Add(1))
				<-release // not r.Context(): work that goes on after the reset
			}),
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.Serve(ln) }()
		var once sync.Once
		free := func() { once.Do(func() { close(release) }) }
		t.Cleanup(func() { free(); srv.Close() })

		// Past the 250 that run and the 1,000 that may wait; none ends
		// before the flood does, so the bound is reached whatever the
		// machine's speed.
		const streams = 5_000
		res := rapidReset(t, ln.Addr().String(), "lingering-service:80", streams, nil)
		t.Logf("handlers that outlive their streams: %v; %d handlers started, at most %d at once", res, started.Load(), maxRunning.Load())
		res.check(t, true)
		if n := started.Load(); n > outbound.H2MaxConcurrentStreams {
			t.Errorf("%d handlers started for %d streams, want at most %d (SETTINGS_MAX_CONCURRENT_STREAMS)", n, res.sent, outbound.H2MaxConcurrentStreams)
		}
		if m := maxRunning.Load(); m > outbound.H2MaxConcurrentStreams {
			t.Errorf("%d handlers ran at once, want at most %d", m, outbound.H2MaxConcurrentStreams)
		}
		free()
		if !proxytest.Poll(30*time.Second, 5*time.Millisecond, func() bool { return running.Load() == 0 }) {
			t.Errorf("%d handlers still running 30 s after they were let go", running.Load())
		}
	})
}

// storeMax raises m to n if n is more.
func storeMax(m *atomic.Int64, n int64) {
	for v := m.Load(); n > v && !m.CompareAndSwap(v, n); v = m.Load() {
	}
}

// resetBatch is how many streams rapidReset writes between its PINGs.
const resetBatch = 500

// resetFlood is what a client saw of its rapid reset flood (rapidReset).
type resetFlood struct {
	sent         int                // streams written, each opened and reset
	pings, acked int                // PINGs sent after each batch, and acknowledged
	werr         error              // what ended the writes early, nil: none
	goaway       *http2.GoAwayFrame // the first GOAWAY, nil: none
	readErr      error              // what ended the reads, nil: the connection is open
	rsts         int                // RST_STREAM frames from the server
	took         time.Duration      // until the last acknowledgement or the end of the connection
}

func (r resetFlood) String() string {
	goaway := "none"
	if r.goaway != nil {
		goaway = fmt.Sprintf("%v after stream %d", r.goaway.ErrCode, r.goaway.LastStreamID)
	}
	return fmt.Sprintf("%d streams sent in %v (write error %v), %d of %d PINGs acknowledged; GOAWAY %s, read %v, %d RST_STREAM from the server",
		r.sent, r.took.Round(time.Millisecond), r.werr, r.acked, r.pings, goaway, r.readErr, r.rsts)
}

// check fails the test on a flood that did not end as the server's
// defence says: every PING acknowledged, the writes whole and no GOAWAY
// but ENHANCE_YOUR_CALM; or the connection closed after GOAWAY
// ENHANCE_YOUR_CALM (Go's server, past its queue of handlers not yet
// started), the writes then cut by the close. wantGoAway says which.
func (r resetFlood) check(t *testing.T, wantGoAway bool) {
	t.Helper()
	if r.goaway != nil && r.goaway.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %v, want none or ENHANCE_YOUR_CALM", r.goaway.ErrCode)
	}
	closed := r.readErr != nil
	switch {
	case wantGoAway && r.goaway == nil:
		t.Errorf("no GOAWAY after %d streams whose handlers never end, want ENHANCE_YOUR_CALM", r.sent)
	case closed && r.goaway == nil:
		t.Errorf("the connection ended without a GOAWAY (%v), want every PING acknowledged or GOAWAY ENHANCE_YOUR_CALM", r.readErr)
	case r.werr != nil && !(closed && (errors.Is(r.werr, syscall.ECONNRESET) || errors.Is(r.werr, syscall.EPIPE))):
		t.Errorf("writing the flood: %v", r.werr)
	case !closed && r.acked < r.pings:
		t.Errorf("%d of %d PINGs acknowledged and the connection open", r.acked, r.pings)
	}
}

// rapidReset floods a new h2c connection to addr with streams streams,
// each a GET for authority ended (END_STREAM) and reset (CANCEL) at
// once, a PING after every resetBatch of them. It waits until the
// server has acknowledged the last PING or ended the connection, and
// returns what it saw. The server reads frames in order, so each
// acknowledgement says it has read every stream before the PING: the
// wait fails when none comes for stallAfter (the server stopped reading,
// or answering), never on the flood's whole time, which is the machine's
// speed: 20,000 streams through the sidecar take 4-8 s under -race alone
// on the 2-core VM, 20-50 s at a load average of 12. during, if not
// nil, runs once, when the first batch has gone out (or the writes
// ended before). The connection stays
// open until the test ends (reset streams must not need its close to
// end their work).
func rapidReset(t *testing.T, addr, authority string, streams int, during func()) resetFlood {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	var mu sync.Mutex
	var res resetFlood
	var acked atomic.Int64
	ackc := make(chan struct{}, 1)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		fr := http2.NewFramer(nil, c)
		for {
			f, err := fr.ReadFrame()
			mu.Lock()
			if err != nil {
				res.readErr = err
				mu.Unlock()
				return
			}
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				if res.goaway == nil {
					res.goaway = f
				}
			case *http2.RSTStreamFrame:
				res.rsts++
			case *http2.PingFrame:
				if f.IsAck() && string(f.Data[:4]) == "rrst" {
					acked.Store(int64(binary.BigEndian.Uint32(f.Data[4:])))
					select {
					case ackc <- struct{}{}:
					default:
					}
				}
			}
			mu.Unlock()
		}
	}()

	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", authority}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	block := hb.Bytes()
	start := time.Now()
	bw := bufio.NewWriterSize(c, 64<<10)
	fr := http2.NewFramer(bw, nil)
	// Each batch has stallAfter to go out: a server that reads slowly
	// slows the writes, one that stopped reading ends them.
	flush := func() error {
		_ = c.SetWriteDeadline(time.Now().Add(stallAfter))
		return bw.Flush()
	}
	sent, pings := 0, 0
	_, werr := bw.WriteString(http2.ClientPreface)
	if werr == nil {
		werr = fr.WriteSettings()
	}
	for werr == nil && sent < streams {
		id := uint32(2*sent + 1)
		if werr = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true, EndStream: true}); werr != nil {
			break
		}
		if werr = fr.WriteRSTStream(id, http2.ErrCodeCancel); werr != nil {
			break
		}
		if sent++; sent%resetBatch != 0 && sent != streams {
			continue
		}
		var data [8]byte
		copy(data[:], "rrst")
		binary.BigEndian.PutUint32(data[4:], uint32(pings+1))
		if werr = fr.WritePing(false, data); werr == nil {
			if werr = flush(); werr == nil {
				pings++
			}
		}
		if during != nil {
			during()
			during = nil
		}
	}
	_ = c.SetWriteDeadline(time.Time{})
	if during != nil {
		during() // no batch went out
	}

	// Wait for the last acknowledgement, or the end of the connection,
	// for as long as acknowledgements come.
	stalled := false
wait:
	for acked.Load() < int64(pings) {
		select {
		case <-readDone:
			break wait
		case <-ackc:
		case <-time.After(stallAfter):
			stalled = true
			break wait
		}
	}
	took := time.Since(start)
	mu.Lock()
	defer mu.Unlock()
	out := res
	out.sent, out.pings, out.acked, out.werr, out.took = sent, pings, int(acked.Load()), werr, took
	if stalled {
		t.Errorf("no PING acknowledgement nor end of the connection for %v: the server stopped reading the flood (%v)", stallAfter, out)
	}
	return out
}

// TestTCPStall: tcpStall finds both ends of a loopback connection in
// /proc/net/tcp, and a peer that leaves bytes unread is no stall.
func TestTCPStall(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := c.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		stalled, queues := tcpStall(c)
		if strings.Contains(queues, "acknowledged: 0, the sidecar's unread: 1000 ") {
			if stalled {
				t.Errorf("stalled, with the peer's 1,000 bytes unread (%s)", queues)
			}
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("not the queues of a written, unread connection: %s", queues)
		}
	}
}

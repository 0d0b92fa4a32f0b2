package xds

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds/xdsclient"
)

// slowConn is a connection whose writes share one egress of rate bytes
// a second with every other connection of its listener, 4 KiB at a time,
// as sidecars served at once over the controller's link share it.
type slowConn struct {
	net.Conn
	mu   *sync.Mutex
	rate float64
}

func (c slowConn) Write(b []byte) (int, error) {
	for off := 0; off < len(b); off += 4096 {
		end := min(off+4096, len(b))
		c.mu.Lock()
		time.Sleep(time.Duration(float64(end-off) / c.rate * float64(time.Second)))
		c.mu.Unlock()
		if _, err := c.Conn.Write(b[off:end]); err != nil {
			return off, err
		}
	}
	return len(b), nil
}

type slowListener struct {
	net.Listener
	mu   sync.Mutex
	rate float64
}

func (l *slowListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	return slowConn{c, &l.mu, l.rate}, err
}

// TestSendTimeoutSparesSlowLinks is the adversarial review's reproducer:
// six sidecars that need a 506 KB EDS response at once over a link that
// carries one in 0.35 timeouts take 2.1 timeouts to be served, each
// response's bytes moving all along. Judged by a response's age, every
// stream was closed, reconnected and sent everything again (12 closes in
// 8 s, the loop never ends); judged by progress none is, and each
// sidecar applies the endpoints once. The link is real sockets and real
// time: what is measured is the bytes' time on the wire.
func TestSendTimeoutSparesSlowLinks(t *testing.T) {
	const n, timeout, bound = 6, 2 * time.Second, 8 * time.Second
	s := NewServer(t.Context(), nil)
	s.SendTimeout = timeout
	if err := s.Set(nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetEndpoints(many("shop", "svc", 190, 100, 1)); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Tracked above the slow link, as the controller tracks its listener
	// above the connection cap: a write returns once the link took it.
	tl := TrackWrites(&slowListener{Listener: ln, rate: 506e3 / (0.35 * timeout.Seconds())})
	var timeouts, applied atomic.Int64
	// WaitForHandlers, as serve's: its Stop leaves no handler running
	// into the next test.
	g := grpc.NewServer(grpc.WaitForHandlers(true), grpc.StreamInterceptor(s.sendTimeouts(tl, func(context.Context, error) { timeouts.Add(1) })))
	s.Register(g)
	go g.Serve(tl)
	t.Cleanup(g.Stop)
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	defer cancel()
	var wg sync.WaitGroup
	for range n {
		c := &xdsclient.Client{Addr: ln.Addr().String(), Node: xdsclient.Node("pod", "shop", "web"),
			Apply: func([]*policy.ResiliencePolicy, string) error { return nil },
			ApplyEndpoints: func(map[string][]xdsclient.Endpoint, string) error {
				applied.Add(1)
				return nil
			},
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		wg.Go(func() { c.Run(ctx) })
	}
	start := time.Now()
	for applied.Load() < n && ctx.Err() == nil && timeouts.Load() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(start)
	cancel()
	wg.Wait()
	if timeouts.Load() > 0 || applied.Load() != n {
		t.Fatalf("%d streams closed by the send timeout; the endpoints applied %d times in %v (want %d, none closed)",
			timeouts.Load(), applied.Load(), took.Round(time.Millisecond), n)
	}
	if took < timeout {
		t.Fatalf("every sidecar served in %v, within the %v timeout: the test does not reproduce the review", took, timeout)
	}
	t.Logf("%d sidecars served in %v (send timeout %v), none closed", n, took.Round(time.Millisecond), timeout)
}

// TestSendTimeoutClockStart: a stream's time to take its responses runs
// from the later of its oldest pending response's send and its
// connection's last write; with the connection unknown, from the send.
func TestSendTimeoutClockStart(t *testing.T) {
	sent := epoch.Add(time.Minute)
	for _, tc := range []struct {
		name    string
		conn    bool
		wrote   time.Duration // after sent; 0: never wrote
		pending bool
		want    time.Time
	}{
		{"nothing pending", true, time.Second, false, time.Time{}},
		{"unknown connection: the send", false, 0, true, sent},
		{"never wrote: the send", true, 0, true, sent},
		{"wrote before the send: the send", true, -time.Second, true, sent},
		{"wrote after the send: the write", true, 3 * time.Second, true, sent.Add(3 * time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &watchedStream{pending: map[string][]sentAt{}}
			if tc.conn {
				w.conn = &trackedConn{}
				if tc.wrote != 0 {
					w.conn.last.Store(int64(sent.Add(tc.wrote).Sub(epoch)))
				}
			}
			if tc.pending {
				w.pending[endpointType] = []sentAt{{"1", sent}, {"2", sent.Add(time.Second)}}
			}
			at, ok := w.clockStart()
			if ok != tc.pending || !at.Equal(tc.want) {
				t.Fatalf("clockStart() = %v, %v; want %v, %v", at, ok, tc.want, tc.pending)
			}
		})
	}
}

// TestWriteTracker: a connection is found by its two ends until it is
// closed, and only a write of minProgressWrite bytes or more is
// progress: the control frames a stuck client can provoke (a PING ack
// is 17 bytes) would otherwise keep its stream open.
func TestWriteTracker(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := TrackWrites(l)
	defer tl.Close()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	go io.Copy(io.Discard, client)
	c, err := tl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	tc := tl.conn(client.RemoteAddr(), client.LocalAddr())
	if tc == nil || tc != c {
		t.Fatalf("conn(%v, %v) = %v, want the accepted connection", client.RemoteAddr(), client.LocalAddr(), tc)
	}
	for _, w := range []struct {
		size     int
		progress bool
	}{{17, false}, {minProgressWrite - 1, false}, {minProgressWrite, true}, {32 << 10, true}} {
		tc.last.Store(0)
		if _, err := c.Write(make([]byte, w.size)); err != nil {
			t.Fatal(err)
		}
		if _, ok := tc.lastWrite(); ok != w.progress {
			t.Errorf("a write of %d bytes: progress %v, want %v", w.size, ok, w.progress)
		}
	}
	c.Close()
	if got := tl.conn(client.RemoteAddr(), client.LocalAddr()); got != nil {
		t.Errorf("a closed connection is still found")
	}
}

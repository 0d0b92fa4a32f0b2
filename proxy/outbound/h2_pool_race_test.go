package outbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestH2ConcurrentCallsNoFalseReset: concurrent calls to a new h2c
// destination all succeed, also when the upstream takes few streams per
// connection (SETTINGS_MAX_CONCURRENT_STREAMS). Go's transport dials
// again for each call that finds every connection full, and a call that
// loses the race for the new connection's room to the other calls dials
// again: refused its third dial (maxDialsPerTry was 2), a call failed as
// a false PROTOCOL_ERROR reset (errRedialed), a 502 and a breaker
// failure. Now the calls that find no room wait for the one dial in
// progress to their destination (newH2CTransport), and only a connection
// lost under a try's stream counts toward errRedialed; only a dial whose
// connection carried no stream toward errDialBound (every dial did before
// 2026-12-07: with limit 1, a try that lost the race 16 times failed, 1
// run in 2 to 5).
func TestH2ConcurrentCallsNoFalseReset(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit uint32 // the upstream's SETTINGS_MAX_CONCURRENT_STREAMS
		calls int
	}{
		{"limit 1, 40 calls", 1, 40},
		{"limit 2, 200 calls", 2, 200},
		{"Go's limit, 1000 calls", 250, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startLimitedH2C(t, tc.limit)
			var dials atomic.Int32
			var mu sync.Mutex
			perTry := int32(0) // the most dials of one try (h2Try.dial)
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				if c, _ := ctx.Value(h2TryKey{}).(*h2Try); c != nil {
					mu.Lock()
					perTry = max(perTry, c.dial.Load())
					mu.Unlock()
				}
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			}
			h2 := newH2CTransport(dial)
			t.Cleanup(h2.CloseIdleConnections)
			tr := h2Tries{h2}

			// Each call says when Go's transport placed it on a
			// connection (GotConn), or that it failed; the upstream
			// holds the calls it takes until every call was placed.
			placed := make(chan struct{}, tc.calls)
			errs := make(chan error, tc.calls)
			var wg sync.WaitGroup
			for i := range tc.calls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var once sync.Once
					err := up.get(tr, "/held", &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) {
						once.Do(func() { placed <- struct{}{} })
					}})
					if err != nil {
						once.Do(func() { placed <- struct{}{} })
						errs <- fmt.Errorf("call %d: %w", i, err)
					}
				}()
			}
			limit := time.After(20 * time.Second)
			for i := range tc.calls {
				select {
				case <-placed:
				case <-limit:
					t.Fatalf("%d of %d calls placed on a connection in 20 s", i, tc.calls)
				}
			}
			up.release()
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			mu.Lock()
			t.Logf("%d calls: %d connections dialled, at most %d by one try", tc.calls, dials.Load(), perTry)
			mu.Unlock()
		})
	}
}

// limitedH2C is an h2c upstream advertising a stream limit, which holds
// each request until release.
type limitedH2C struct {
	addr string
	held chan struct{}
	once sync.Once
}

func (u *limitedH2C) release() { u.once.Do(func() { close(u.held) }) }

func startLimitedH2C(t *testing.T, limit uint32) *limitedH2C {
	t.Helper()
	u := &limitedH2C{held: make(chan struct{})}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols: &p,
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: int(limit)},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-u.held:
			case <-r.Context().Done():
			}
		}),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { u.release(); srv.Close() })
	u.addr = ln.Addr().String()
	return u
}

// get is a GET of path through rt, with trace (if any) on its context.
func (u *limitedH2C) get(rt http.RoundTripper, path string, trace *httptrace.ClientTrace) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if trace != nil {
		ctx = httptrace.WithClientTrace(ctx, trace)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+u.addr+path, nil)
	if err != nil {
		return err
	}
	res, err := rt.RoundTrip(req)
	if err != nil {
		return err
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", res.StatusCode)
	}
	return nil
}

// TestH2TryDialBounds: the bounds of a try's dials (boundDials), on a
// fake dialer: a try that keeps dialling while the connections it was
// placed on stay open (racing other calls for room) is dialled up to
// maxDialsPerTry times, unless another call's stream went out on each
// (it took the room first: up to maxDialsAtAll); one whose connection
// closed under it twice (Go's transport closes a connection whose stream
// the upstream reset with PROTOCOL_ERROR) is refused with errRedialed, as
// the reset it is, also when each closed only after the try had dialled
// again.
func TestH2TryDialBounds(t *testing.T) {
	for _, tc := range []struct {
		name      string
		placeOn   bool // each dialled connection carries the request
		closeEach bool // and closes under it
		closeLate bool // only after the try dialled again (other streams kept it open)
		other     bool // another call's stream goes out on each dialled connection
		reset     bool // and the upstream resets it (PROTOCOL_ERROR)
		dials     int  // dials that succeed
		want      error
	}{
		{"no room, never placed", false, false, false, false, false, maxDialsPerTry, errDialBound},
		{"no room, placed on connections that stay", true, false, false, false, false, maxDialsPerTry, errDialBound},
		{"racing for room, each taken by another call", false, false, false, true, false, maxDialsAtAll, errDialCap},
		{"racing for room, another call's stream reset on each", false, false, false, true, true, maxDialsPerTry, errDialBound},
		{"reset on every new connection", true, true, false, false, false, maxLostPerTry, errRedialed},
		{"reset, each closing after the next dial", true, false, true, false, false, maxLostPerTry, errRedialed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dial := boundDials(func(context.Context, string, string) (net.Conn, error) {
				a, b := net.Pipe()
				t.Cleanup(func() { a.Close(); b.Close() })
				return a, nil
			})
			try := &h2Try{Context: t.Context()}
			var prev net.Conn
			for i := range tc.dials {
				c, err := dial(try, "tcp", "10.0.0.1:80")
				if err != nil {
					t.Fatalf("dial %d: %v", i+1, err)
				}
				if tc.placeOn {
					try.gotConn(httptrace.GotConnInfo{Conn: c})
				}
				if tc.other {
					c.(*h2Conn).sent.Store(1)
					c.(*h2Conn).reset.Store(tc.reset)
				}
				if tc.closeEach {
					c.Close()
				}
				if tc.closeLate {
					if prev != nil {
						prev.Close()
					}
					prev = c
				}
			}
			if prev != nil {
				prev.Close()
			}
			if _, err := dial(try, "tcp", "10.0.0.1:80"); err != tc.want {
				t.Errorf("dial %d: %v, want %v", tc.dials+1, err, tc.want)
			}
		})
	}
}

// TestH2UnreachableDialShared: calls to a destination whose one dial in
// progress fails (an unreachable pod, at the connect timeout) fail with
// it, as they failed with their own dials before Go's transport dialled
// once at a time per destination: each in its turn, one connect timeout
// after the one before, they would wait to their own deadlines, timeouts
// where their retry on another pod (connect-failure) was due. A call
// begun after the failure dials again.
func TestH2UnreachableDialShared(t *testing.T) {
	const calls = 20
	errUnreachable := errors.New("dial tcp 10.0.0.9:80: i/o timeout (fake)")
	started, fail := make(chan struct{}, calls+1), make(chan struct{})
	var dials atomic.Int32
	h2 := newH2CTransport(func(ctx context.Context, _, _ string) (net.Conn, error) {
		dials.Add(1)
		started <- struct{}{}
		<-fail
		return nil, errUnreachable
	})
	t.Cleanup(h2.CloseIdleConnections)
	tr := h2Tries{h2}
	call := func(trace *httptrace.ClientTrace) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if trace != nil {
			ctx = httptrace.WithClientTrace(ctx, trace)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://10.0.0.9:80/", nil)
		if err != nil {
			return err
		}
		res, err := tr.RoundTrip(req)
		if err == nil {
			res.Body.Close()
		}
		return err
	}
	asking := make(chan struct{}, calls)
	errs := make(chan error, calls)
	for range calls {
		go func() {
			errs <- call(&httptrace.ClientTrace{GetConn: func(string) { asking <- struct{}{} }})
		}()
	}
	for range calls {
		<-asking
	}
	<-started // the one dial
	close(fail)
	for i := range calls {
		select {
		case err := <-errs:
			if !errors.Is(err, errUnreachable) {
				t.Errorf("call %d: %v, want the dial's error", i, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%d of %d calls answered in 20 s (%d dials)", i, calls, dials.Load())
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d dials for %d calls waiting on one, want 1", n, calls)
	}
	if err := call(nil); !errors.Is(err, errUnreachable) || dials.Load() != 2 {
		t.Errorf("a call after the failure: %v, %d dials in all; want its own dial (2), failed", err, dials.Load())
	}
}

// TestH2ResetRedialConcurrent: concurrent GETs to an upstream that resets
// every stream with PROTOCOL_ERROR each fail as that reset after a few
// dials of their own. A connection so reset stays open as long as other
// calls' streams are on it, so it was not yet closed when the try on it
// dialled again, and was not counted lost: a try dialled up to 16 times
// (maxDialsPerTry), 107 to 524 dials for 50 calls.
func TestH2ResetRedialConcurrent(t *testing.T) {
	for _, calls := range []int{50, 200} {
		t.Run(fmt.Sprintf("%d calls", calls), func(t *testing.T) {
			addr, streams, conns := resettingH2Upstream(t)
			var mu sync.Mutex
			perTry := int32(0) // the most dials of one try (h2Try.dial)
			h2 := newH2CTransport(func(ctx context.Context, network, addr string) (net.Conn, error) {
				if c, _ := ctx.Value(h2TryKey{}).(*h2Try); c != nil {
					mu.Lock()
					perTry = max(perTry, c.dial.Load())
					mu.Unlock()
				}
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			})
			t.Cleanup(h2.CloseIdleConnections)
			up := &limitedH2C{addr: addr}
			errs := make(chan error, calls)
			var wg sync.WaitGroup
			for range calls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- up.get(h2Tries{h2}, "/x", nil)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err == nil || !errors.Is(err, errRedialed) && !isStreamReset(err) {
					t.Errorf("a call: %v, want the upstream's PROTOCOL_ERROR reset", err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			t.Logf("%d calls: %d connections, %d streams, at most %d dials by one try", calls, conns.Load(), streams.Load(), perTry)
			if perTry > 3 {
				t.Errorf("a try dialled %d times, want at most 3", perTry)
			}
		})
	}
}

// isStreamReset: err is an HTTP/2 stream reset (what Go's transport
// returns when it does not dial again).
func isStreamReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "PROTOCOL_ERROR")
}

// TestH2ConnSeesProtocolReset: h2Conn tells an RST_STREAM with
// PROTOCOL_ERROR among the frames it reads, however they are split into
// reads, and no other frame or error code for one.
func TestH2ConnSeesProtocolReset(t *testing.T) {
	settings := h2Frames(t, func(fr *http2.Framer) error {
		return fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1})
	})
	// A DATA payload holding what an RST_STREAM PROTOCOL_ERROR looks like.
	data := h2Frames(t, func(fr *http2.Framer) error {
		return fr.WriteData(1, false, []byte{0, 0, 4, 3, 0, 0, 0, 0, 1, 0, 0, 0, 1})
	})
	rst := func(code http2.ErrCode) []byte {
		return h2Frames(t, func(fr *http2.Framer) error { return fr.WriteRSTStream(3, code) })
	}
	for _, tc := range []struct {
		name   string
		stream []byte
		want   bool
	}{
		{"settings and data", slices.Concat(settings, data), false},
		{"refused stream", slices.Concat(settings, rst(http2.ErrCodeRefusedStream)), false},
		{"cancel", slices.Concat(settings, data, rst(http2.ErrCodeCancel)), false},
		{"protocol error", slices.Concat(settings, data, rst(http2.ErrCodeProtocol)), true},
		{"protocol error after a refused stream", slices.Concat(settings, rst(http2.ErrCodeRefusedStream), data, rst(http2.ErrCodeProtocol)), true},
	} {
		for _, size := range []int{1, 2, 5, 9, 13, 4096} {
			t.Run(fmt.Sprintf("%s, reads of %d", tc.name, size), func(t *testing.T) {
				c := &h2Conn{Conn: &chunkConn{b: tc.stream}}
				buf := make([]byte, size)
				for {
					if _, err := c.Read(buf); err != nil {
						break
					}
				}
				if got := c.reset.Load(); got != tc.want {
					t.Errorf("reset %v, want %v", got, tc.want)
				}
			})
		}
	}
}

package outbound

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/rawio"
	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

func fastGet(t *testing.T, ft *fastTransport, addr, method string) (*http.Response, string, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), method, "http://"+addr+"/", nil)
	resp, err := ft.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

func newTestFast() *fastTransport {
	d := newDialer(time.Second, nil, newSelfAddrs())
	return newFastTransport(d.DialContext, http.DefaultTransport, 4)
}

// TestFastPathKeepsAfterCloseIdle: a connection kept after
// CloseIdleConnections is in the transport's lists again, where the next
// CloseIdleConnections finds it.
func TestFastPathKeepsAfterCloseIdle(t *testing.T) {
	u := proxytest.NewUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int64) { _, _ = io.WriteString(w, "ok") })
	ft := newTestFast()
	defer ft.CloseIdleConnections()
	kept := func() int {
		ft.mu.Lock()
		defer ft.mu.Unlock()
		n := 0
		for _, l := range ft.idle {
			n += len(l.conns)
		}
		return n
	}
	for i, want := range []int{1, 1} {
		if _, body, err := fastGet(t, ft, u.Host(), http.MethodGet); err != nil || body != "ok" {
			t.Fatalf("request %d: %q %v", i+1, body, err)
		}
		if n := kept(); n != want {
			t.Fatalf("after request %d: %d connections kept, want %d", i+1, n, want)
		}
		ft.CloseIdleConnections()
		if n := kept(); n != 0 {
			t.Fatalf("after CloseIdleConnections: %d connections kept, want 0", n)
		}
	}
}

// The first connection answers one request and then closes, as a server
// whose idle timeout ran out does: the next request must go on a new
// connection without the app seeing an error.
func TestFastPathRetriesStaleConnection(t *testing.T) {
	addr, conns := rawRequests(t, func(c net.Conn, n int, _ *http.Request) bool {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return n != 1 // close after the first answer, without saying so
	})
	ft := newTestFast()
	for i := range 3 {
		if i == 1 {
			time.Sleep(50 * time.Millisecond) // let the close arrive
		}
		resp, body, err := fastGet(t, ft, addr, http.MethodGet)
		if err != nil || resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %v %v %q", i+1, resp, err, body)
		}
	}
	if got := conns.Load(); got != 2 {
		t.Fatalf("connections = %d, want 2 (one closed by the server, one kept)", got)
	}
}

// A kept connection on which the upstream sent something unasked (a 408
// before its idle close, bytes past the end of a response) is closed, not
// used: the next request goes on a new connection and gets its own
// answer, never those bytes.
func TestFastPathDropsConnectionWithUnaskedBytes(t *testing.T) {
	for _, tc := range []struct {
		name, unasked string
		close         bool
	}{
		{"408 then close", "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", true},
		{"a response nobody asked for", "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nlate", false},
		{"bytes past the end", "garbage", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			send := make(chan struct{})
			addr, conns := rawRequests(t, func(c net.Conn, n int, _ *http.Request) bool {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				if n == 1 {
					<-send
					io.WriteString(c, tc.unasked)
					return !tc.close
				}
				return true
			})
			ft := newTestFast()
			if resp, body, err := fastGet(t, ft, addr, http.MethodGet); err != nil || resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("first request: %v %v %q", resp, err, body)
			}
			ft.mu.Lock()
			kept := ft.idle[addr].conns
			ft.mu.Unlock()
			if len(kept) != 1 {
				t.Fatalf("%d connections kept after the first request, want 1", len(kept))
			}
			close(send)
			// Until the bytes are there: the test is of a connection that
			// has them when it is taken.
			for deadline := time.Now().Add(5 * time.Second); !rawio.Pending(kept[0].Conn); time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the unasked bytes never arrived")
				}
			}
			for i := range 2 {
				resp, body, err := fastGet(t, ft, addr, http.MethodGet)
				if err != nil || resp.StatusCode != 200 || body != "ok" {
					t.Fatalf("request %d after the unasked bytes: %v %v %q, want 200 ok", i+2, resp, err, body)
				}
			}
			if got := conns.Load(); got != 2 {
				t.Fatalf("connections = %d, want 2 (the spoilt one closed, a new one kept)", got)
			}
		})
	}
}

func TestFastPathKeepsConnectionsAndHEAD(t *testing.T) {
	addr, conns := rawRequests(t, func(c net.Conn, _ int, req *http.Request) bool {
		if req.Method == http.MethodHead {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
		} else {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
		}
		return true
	})
	ft := newTestFast()
	for i := range 20 {
		m := http.MethodGet
		if i%2 == 1 {
			m = http.MethodHead
		}
		resp, body, err := fastGet(t, ft, addr, m)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s %d: %v %v", m, i, resp, err)
		}
		if want := map[string]string{http.MethodGet: "hello", http.MethodHead: ""}[m]; body != want {
			t.Fatalf("%s body %q, want %q", m, body, want)
		}
	}
	if got := conns.Load(); got != 1 {
		t.Fatalf("20 sequential requests used %d connections, want 1", got)
	}
}

func TestFastPathBoundsResponseHead(t *testing.T) {
	addr, _ := proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		_, _ = http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: "+strings.Repeat("a", 200<<10)+"\r\n\r\n")
	})
	if _, _, err := fastGet(t, newTestFast(), addr, http.MethodGet); err == nil {
		t.Fatal("a 200 KiB response head was accepted")
	}
}

func TestFastPathLeavesOthersToTransport(t *testing.T) {
	for _, tc := range []struct {
		method string
		body   io.Reader
		hdr    string
		want   bool
	}{
		{http.MethodGet, nil, "", true},
		{http.MethodHead, nil, "", true},
		{http.MethodOptions, nil, "", true},
		{http.MethodPost, nil, "", true},
		{http.MethodDelete, nil, "", true},
		{http.MethodConnect, nil, "", false},
		{http.MethodGet, strings.NewReader("x"), "", false}, // a body RoundTrip cannot hold
		{http.MethodPost, strings.NewReader("x"), "", false},
		{http.MethodGet, nil, "websocket", false},
	} {
		req, _ := http.NewRequest(tc.method, "http://geo:80/", tc.body)
		if tc.hdr != "" {
			req.Header.Set("Upgrade", tc.hdr)
		}
		if got := eligible(req); got != tc.want {
			t.Errorf("%s body=%v upgrade=%q: eligible %v, want %v", tc.method, tc.body != nil, tc.hdr, got, tc.want)
		}
	}
}

// TestFastPathSendsHeldBodies: a body the forwarder holds whole goes
// with its head, up to fastBodyMax bytes, of a known length, without
// Expect or trailers; the others go to http.Transport.
func TestFastPathSendsHeldBodies(t *testing.T) {
	for _, tc := range []struct {
		name   string
		n      int
		length int64
		modify func(*http.Request)
		want   bool
	}{
		{"small", 9, 9, nil, true},
		{"empty", 0, 0, nil, true},
		{"largest", fastBodyMax, fastBodyMax, nil, true},
		{"larger", fastBodyMax + 1, fastBodyMax + 1, nil, false},
		{"length not the body's", 9, 8, nil, false},
		{"expect", 9, 9, func(r *http.Request) { r.Header.Set("Expect", "100-continue") }, false},
		{"chunked", 9, 9, func(r *http.Request) { r.TransferEncoding = []string{"chunked"} }, false},
		{"trailers", 9, 9, func(r *http.Request) { r.Trailer = http.Header{"X-Sum": nil} }, false},
		{"connect", 9, 9, func(r *http.Request) { r.Method = http.MethodConnect }, false},
		{"https", 9, 9, func(r *http.Request) { r.URL.Scheme = "https" }, false},
	} {
		body := make([]byte, tc.n)
		req, _ := http.NewRequest(http.MethodPost, "http://geo:80/", bytes.NewReader(body))
		req.ContentLength = tc.length
		if tc.modify != nil {
			tc.modify(req)
		}
		if got := sendable(req, body); got != tc.want {
			t.Errorf("%s: sendable %v, want %v", tc.name, got, tc.want)
		}
	}
}

// slowUpstream answers /slow-head after 2 s, /slow-body's second half
// 300 ms after its head, anything else at once, on kept connections.
func slowUpstream(t *testing.T) (string, *atomic.Int32) {
	return rawRequests(t, func(c net.Conn, _ int, req *http.Request) bool {
		switch req.URL.Path {
		case "/slow-head":
			time.Sleep(2 * time.Second)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		case "/slow-body":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
			time.Sleep(300 * time.Millisecond)
			io.WriteString(c, "ok")
		default:
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		return true
	})
}

// getBy sends GET path to addr through ft by dl and reads the body whole.
func getBy(ft *fastTransport, addr, path string, dl deadlines) (string, error) {
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://"+addr+path, nil)
	resp, err := ft.roundTrip(req, dl, nil, new(respScratch))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// A per-try deadline bounds the try up to the response head: a head that
// does not come by then fails the try with errPerTryTimeout (and the
// connection is not kept), a body that comes after it is read whole, and
// the connection then serves a request with no deadline.
func TestFastPathTryDeadline(t *testing.T) {
	addr, conns := slowUpstream(t)
	ft := newTestFast()
	try := func(path string, deadline time.Time) (string, error) {
		return getBy(ft, addr, path, deadlines{try: deadline})
	}
	start := time.Now()
	if _, err := try("/slow-head", time.Now().Add(100*time.Millisecond)); !errors.Is(err, errPerTryTimeout) {
		t.Fatalf("a head later than the deadline: %v, want errPerTryTimeout", err)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("the try ended after %v, want at its 100ms deadline, long before the head", d)
	}
	if body, err := try("/slow-body", time.Now().Add(100*time.Millisecond)); err != nil || body != "okok" {
		t.Fatalf("a body later than the deadline: %q, %v; want it whole", body, err)
	}
	if body, err := try("/", time.Time{}); err != nil || body != "ok" {
		t.Fatalf("the kept connection without a deadline: %q, %v", body, err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2: the timed-out one closed, the other kept", n)
	}
}

// The request's timeout, as the fast transport's whole deadline, bounds
// the head (errTimeout, not the per-try timeout, whichever of the two
// comes first wins) and then the body: a body still coming at it fails
// with a timeout and its connection is closed; a body done before it
// leaves a connection kept for the next request, which its deadline,
// left on it, does not fail (send replaces it).
func TestFastPathRequestDeadline(t *testing.T) {
	addr, conns := slowUpstream(t)
	ft := newTestFast()
	try := func(path string, dl deadlines) (string, error) { return getBy(ft, addr, path, dl) }
	in := func(d time.Duration) time.Time { return time.Now().Add(d) }
	for _, tc := range []struct {
		name       string
		try, whole time.Duration // from the try's start; 0: none
		want       error
	}{
		{"request timeout alone", 0, 100 * time.Millisecond, errTimeout},
		{"request timeout first", time.Second, 100 * time.Millisecond, errTimeout},
		{"per-try timeout first", 100 * time.Millisecond, time.Second, errPerTryTimeout},
	} {
		start := time.Now()
		var dl deadlines
		if tc.try > 0 {
			dl.try = start.Add(tc.try)
		}
		dl.whole = start.Add(tc.whole)
		_, err := try("/slow-head", dl)
		if !errors.Is(err, tc.want) || tc.want == errTimeout && errors.Is(err, errPerTryTimeout) {
			t.Errorf("%s: a late head: %v, want %v", tc.name, err, tc.want)
		}
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Errorf("%s: the try ended after %v, want at its deadline, long before the head", tc.name, d)
		}
	}
	_, err := try("/slow-body", deadlines{whole: in(150 * time.Millisecond)})
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("a body later than the request's deadline: %v, want a timeout", err)
	}
	if c, _ := classify(err, context.Background(), context.Background()); c != policy.ClassTimeout {
		t.Errorf("the late body's error is classed %v, want a timeout", c)
	}
	before := conns.Load()
	whole := in(time.Second)
	if body, err := try("/slow-body", deadlines{try: in(100 * time.Millisecond), whole: whole}); err != nil || body != "okok" {
		t.Fatalf("a body in time for the request's deadline: %q, %v; want it whole", body, err)
	}
	if body, err := try("/", deadlines{}); err != nil || body != "ok" {
		t.Fatalf("the kept connection without a deadline: %q, %v", body, err)
	}
	// Once that deadline has passed, a deadline left on the kept
	// connection would fail the next request at once.
	time.Sleep(time.Until(whole) + 50*time.Millisecond)
	if body, err := try("/", deadlines{}); err != nil || body != "ok" {
		t.Fatalf("the kept connection past the earlier request's deadline: %q, %v", body, err)
	}
	if n := conns.Load(); n != before+1 {
		t.Errorf("%d connections after the timely body, want %d: one, kept", n-before, 1)
	}
}

// A connect that outlasts the per-try deadline fails the try with
// errPerTryTimeout; one the request's own end cuts short fails with that
// end, as the per-try context's cancel did.
func TestFastPathTryDeadlineConnect(t *testing.T) {
	hang := func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, &dialError{ctx.Err()}
	}
	ft := newFastTransport(hang, http.DefaultTransport, 4)
	bound, stop := context.WithTimeout(context.Background(), 5*time.Second) // should the deadline be lost
	defer stop()
	req, _ := http.NewRequestWithContext(bound, http.MethodGet, "http://upstream.test/", nil)
	if _, err := ft.roundTrip(req, deadlines{try: time.Now().Add(50 * time.Millisecond)}, nil, new(respScratch)); !errors.Is(err, errPerTryTimeout) {
		t.Fatalf("connect past the deadline: %v, want errPerTryTimeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, "http://upstream.test/", nil)
	_, err := ft.roundTrip(req, deadlines{try: time.Now().Add(time.Minute)}, nil, new(respScratch))
	var de *dialError
	if !errors.As(err, &de) || !errors.Is(err, context.Canceled) {
		t.Fatalf("connect cut short by the request's end: %v, want the dial's context.Canceled", err)
	}
	// The sidecar's refusal to dial itself stays that, late or not: the
	// app is answered 403, not a per-try timeout retried.
	self := newFastTransport(func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, &selfError{addr: "127.0.0.1:15001", asked: "upstream.test:80"}
	}, http.DefaultTransport, 4)
	req, _ = http.NewRequestWithContext(bound, http.MethodGet, "http://upstream.test/", nil)
	_, err = self.roundTrip(req, deadlines{try: time.Now().Add(20 * time.Millisecond)}, nil, new(respScratch))
	var se *selfError
	if !errors.As(err, &se) || errors.Is(err, errPerTryTimeout) {
		t.Fatalf("a refusal to dial the sidecar itself, after the deadline: %v, want the selfError alone", err)
	}
}

// TestDialLateEitherTimeout: a dial whose deadline passed before its
// context's timer ran fails with net's "i/o timeout" from the context's
// deadline (context.DeadlineExceeded, not os.ErrDeadlineExceeded) as
// often as with the socket's: both are the try's deadline, not a connect
// failure. A timeout before the deadline (the dialer's own) is neither.
func TestDialLateEitherTimeout(t *testing.T) {
	late := errors.New("late")
	past := time.Now().Add(-time.Millisecond)
	ctx, cancel := context.WithDeadline(context.Background(), past)
	defer cancel()
	var d net.Dialer
	_, ctxErr := d.DialContext(ctx, "tcp", "127.0.0.1:1")
	if !errors.Is(ctxErr, context.DeadlineExceeded) || errors.Is(ctxErr, os.ErrDeadlineExceeded) {
		t.Fatalf("dial past its context's deadline: %v, want net's context timeout", ctxErr)
	}
	for _, tc := range []struct {
		name     string
		err      error
		deadline time.Time
		want     bool
	}{
		{"the context's timeout at the deadline", ctxErr, past, true},
		{"the socket's timeout at the deadline", &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}, past, true},
		{"a timeout before the deadline", ctxErr, time.Now().Add(time.Minute), false},
		{"no deadline", ctxErr, time.Time{}, false},
		{"refused at the deadline", syscall.ECONNREFUSED, past, false},
	} {
		if got := dialLate(tc.err, context.Background(), tc.deadline, late); got != tc.want {
			t.Errorf("%s: dialLate %v, want %v", tc.name, got, tc.want)
		}
	}
}

// A connect still waiting at a try's deadline fails with that deadline's
// error, every time: the dialer's socket deadline, set from the dial
// context's, may wake it before the context's own timer ends it, and
// that i/o timeout is no connect failure. The dialer's connect timeout,
// before any deadline, stays a connect failure.
func TestFastPathDeadlineConnectTimeout(t *testing.T) {
	addr, _ := proxytest.FullAcceptQueue(t)
	ft := newTestFast()
	for i := range 100 {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://"+addr+"/", nil)
		_, err := ft.roundTrip(req, deadlines{whole: time.Now().Add(5 * time.Millisecond)}, nil, new(respScratch))
		if c, _ := classify(err, context.Background(), context.Background()); !errors.Is(err, errTimeout) || c != policy.ClassTimeout {
			t.Fatalf("connect %d past the request's deadline: %v (class %v), want errTimeout", i, err, c)
		}
	}
	quick := newFastTransport(newDialer(20*time.Millisecond, nil, newSelfAddrs()).DialContext, http.DefaultTransport, 4)
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://"+addr+"/", nil)
	_, err := quick.roundTrip(req, deadlines{whole: time.Now().Add(time.Minute)}, nil, new(respScratch))
	if c, _ := classify(err, context.Background(), context.Background()); errors.Is(err, errTimeout) || c != policy.ClassConnectFailure {
		t.Fatalf("the dialer's connect timeout: %v (class %v), want a connect failure", err, c)
	}
}

// lateCtx ends as a context.cancelCtx does, Err first and its AfterFunc
// callbacks after, and holds that window open: the callbacks never run.
type lateCtx struct {
	context.Context
	done chan struct{}
	mu   sync.Mutex
	err  error
}

func (c *lateCtx) Done() <-chan struct{} { return c.done }

func (c *lateCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *lateCtx) AfterFunc(func()) func() bool { return func() bool { return true } }

func (c *lateCtx) end() {
	c.mu.Lock()
	c.err = context.Canceled
	c.mu.Unlock()
	close(c.done)
}

// A try whose request ends as its bodiless answer's head comes in: the
// deadline's clear wakes the connection again (the context's own wake
// may have come before it), so the connection is never kept, even when
// stop wins against the context's AfterFunc: the next request, with no
// deadline, gets a connection of its own and its answer.
func TestFastPathTryDeadlineEndedNotKept(t *testing.T) {
	got, proceed := make(chan struct{}), make(chan struct{})
	var answered bool // the first connection's first request; only its server reads it
	addr, conns := rawRequests(t, func(c net.Conn, n int, _ *http.Request) bool {
		if n == 1 && !answered {
			answered = true
			close(got)
			<-proceed
			io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
			return true
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	ft := newTestFast()
	ctx := &lateCtx{Context: context.Background(), done: make(chan struct{})}
	go func() { <-got; ctx.end(); close(proceed) }()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	resp, err := ft.roundTrip(req, deadlines{try: time.Now().Add(5 * time.Second)}, nil, new(respScratch))
	if err != nil {
		t.Fatalf("first try: %v", err)
	}
	resp.Body.Close()
	req, _ = http.NewRequestWithContext(context.Background(), http.MethodGet, "http://"+addr+"/", nil)
	resp, err = ft.roundTrip(req, deadlines{}, nil, new(respScratch))
	if err != nil {
		t.Fatalf("the next request, no deadline: %v (connections: %d)", err, conns.Load())
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" || conns.Load() != 2 {
		t.Fatalf("the next request: %q on %d connections, want ok on a second one", b, conns.Load())
	}
}

// The clear of the deadline must not undo a wake that came before it: a
// request that ends while its 1xx is handed on (the final head already
// buffered) has its body's read cut short at once, not left waiting for
// the upstream.
func TestFastPathTryDeadlineRewake(t *testing.T) {
	addr, _ := proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
		time.Sleep(3 * time.Second)
		io.WriteString(c, "ok")
	})
	ft := newTestFast()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	woke := make(chan struct{})
	context.AfterFunc(ctx, func() { close(woke) }) // registered first: run before the transport's
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: func(int, textproto.MIMEHeader) error {
		cancel()
		<-woke
		time.Sleep(20 * time.Millisecond) // the transport's wake, right after
		return nil
	}})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	start := time.Now()
	resp, err := ft.roundTrip(req, deadlines{try: time.Now().Add(10 * time.Second)}, nil, new(respScratch))
	if err != nil {
		t.Fatalf("roundTrip: %v", err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the body of an ended request was read for %v (%v): the wake was undone", d, err)
	}
}

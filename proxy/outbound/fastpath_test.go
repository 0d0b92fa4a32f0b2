package outbound

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/internal/rawio"
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

// The first connection answers one request and then closes, as a server
// whose idle timeout ran out does: the next request must go on a new
// connection without the app seeing an error.
func TestFastPathRetriesStaleConnection(t *testing.T) {
	addr, conns := proxytest.RawServer(t, func(c net.Conn, n int) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			_ = req
			if n == 1 {
				return // close after the first answer, without saying so
			}
		}
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
			addr, conns := proxytest.RawServer(t, func(c net.Conn, n int) {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					if n == 1 {
						<-send
						io.WriteString(c, tc.unasked)
						if tc.close {
							return
						}
					}
				}
			})
			ft := newTestFast()
			if resp, body, err := fastGet(t, ft, addr, http.MethodGet); err != nil || resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("first request: %v %v %q", resp, err, body)
			}
			ft.mu.Lock()
			kept := ft.idle[addr]
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
	addr, conns := proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.Method == http.MethodHead {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
				continue
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
		}
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
		{http.MethodPost, nil, "", false},
		{http.MethodGet, strings.NewReader("x"), "", false},
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

// A per-try deadline bounds the try up to the response head: a head that
// does not come by then fails the try with errPerTryTimeout (and the
// connection is not kept), a body that comes after it is read whole, and
// the connection then serves a request with no deadline.
func TestFastPathTryDeadline(t *testing.T) {
	addr, conns := proxytest.RawServer(t, func(c net.Conn, _ int) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			switch req.URL.Path {
			case "/slow-head":
				time.Sleep(300 * time.Millisecond)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			case "/slow-body":
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
				time.Sleep(300 * time.Millisecond)
				io.WriteString(c, "ok")
			default:
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		}
	})
	ft := newTestFast()
	try := func(path string, deadline time.Time) (string, error) {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://"+addr+path, nil)
		resp, err := ft.roundTrip(req, deadline)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	start := time.Now()
	if _, err := try("/slow-head", time.Now().Add(100*time.Millisecond)); err != errPerTryTimeout {
		t.Fatalf("a head later than the deadline: %v, want errPerTryTimeout", err)
	}
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Errorf("the try ended after %v, want at its 100ms deadline", d)
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
	if _, err := ft.roundTrip(req, time.Now().Add(50*time.Millisecond)); err != errPerTryTimeout {
		t.Fatalf("connect past the deadline: %v, want errPerTryTimeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, "http://upstream.test/", nil)
	_, err := ft.roundTrip(req, time.Now().Add(time.Minute))
	var de *dialError
	if !errors.As(err, &de) || !errors.Is(err, context.Canceled) {
		t.Fatalf("connect cut short by the request's end: %v, want the dial's context.Canceled", err)
	}
}

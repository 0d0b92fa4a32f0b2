package proxytest

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// Upstream is a loopback HTTP server that counts the requests it gets.
// Each request is counted, announced on Arrived, held for Delay, and then
// handled by the handler given to NewUpstream.
type Upstream struct {
	*httptest.Server
	Hits    atomic.Int64
	Delay   atomic.Int64  // nanoseconds a request waits before its handler runs
	Arrived chan struct{} // a token per request, while it has room (100)

	// release is closed when the test ends: it ends the handlers'
	// contexts, so that handlers that hang return and the server closes.
	release chan struct{}
}

// NewUpstream starts an Upstream that stops when the test ends. h runs
// after the request is counted (n is its number, from 1) and delayed; its
// request's context also ends when the test does. A request whose context
// ends during the delay is answered by no handler.
func NewUpstream(t testing.TB, h func(w http.ResponseWriter, r *http.Request, n int64)) *Upstream {
	t.Helper()
	u := &Upstream{Arrived: make(chan struct{}, 100), release: make(chan struct{})}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := u.Hits.Add(1)
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		go func() {
			select {
			case <-u.release:
				cancel()
			case <-ctx.Done():
			}
		}()
		select {
		case u.Arrived <- struct{}{}:
		default:
		}
		if d := time.Duration(u.Delay.Load()); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return
			}
		}
		h(w, r.WithContext(ctx), n)
	}))
	t.Cleanup(u.Close)
	t.Cleanup(func() { close(u.release) }) // runs first
	return u
}

// Host is the upstream's host:port.
func (u *Upstream) Host() string { return u.Listener.Addr().String() }

// AwaitRequest waits until a request has reached the upstream (a token on
// Arrived), and fails the test after within.
func (u *Upstream) AwaitRequest(t testing.TB, within time.Duration) {
	t.Helper()
	select {
	case <-u.Arrived:
	case <-time.After(within):
		t.Fatal("request never reached the upstream")
	}
}

// Response is what a request got: its status and body, or an error.
type Response struct {
	Code int
	Body string
	Err  error
	// Close: the answer said Connection: close.
	Close bool
}

// GetAsync sends GET url with c in the background; the channel (buffered)
// gets the outcome.
func GetAsync(c *http.Client, url string) <-chan Response {
	res := make(chan Response, 1)
	go func() {
		resp, err := c.Get(url)
		if err != nil {
			res <- Response{Err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- Response{Code: resp.StatusCode, Body: string(b), Err: err, Close: resp.Close}
	}()
	return res
}

package soak

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
)

// The upstreams of the soak, all on loopback in the test process. Each
// answer that an upstream gives carries X-Upstream, so that the client
// can tell it from the sidecar's own.

const upstreamHold = 10 * time.Second // the longest any upstream holds a request

// serveHTTP starts an HTTP upstream that closes connections idle for a
// second, so that what the sidecar keeps of it is short-lived.
func serveHTTP(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, IdleTimeout: time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// okUpstream answers 200 after reading the request body.
func okUpstream(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	w.Header().Set("X-Upstream", "ok")
	fmt.Fprintf(w, "ok, %d bytes read\n", n)
}

// slowUpstream sends its body in 10 pieces, 30 ms apart.
func slowUpstream(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("X-Upstream", "slow")
	for i := range 10 {
		fmt.Fprintf(w, "piece %d\n", i)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-time.After(30 * time.Millisecond):
		}
	}
}

// hangUpstream sends its headers, then nothing until the request ends.
func hangUpstream(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Upstream", "hang")
	w.Header().Set("Content-Length", "100")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	select {
	case <-r.Context().Done():
	case <-time.After(upstreamHold):
	}
}

// rawUpstream is a TCP server that handles each connection with f after
// reading one request; it stops when the test ends.
type rawUpstream struct {
	ln   net.Listener
	wg   sync.WaitGroup
	hits atomic.Int64
}

func serveRaw(t *testing.T, f func(c net.Conn)) *rawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(upstreamHold))
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				u.hits.Add(1)
				f(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); u.wg.Wait() })
	return u
}

// resetMidResponse sends headers and a tenth of the announced body, then
// resets the connection.
func resetMidResponse(c net.Conn) {
	_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Upstream: reset\r\nContent-Length: 1000\r\n\r\n"+strings.Repeat("r", 100))
	time.Sleep(5 * time.Millisecond)
	_ = c.(*net.TCPConn).SetLinger(0)
}

// Modes of the upstream that misbehaves in turn.
const (
	turnOK = iota
	turnReset
	turnHang
	turnSlow
	turnRefused
	turnModes
)

// turnUpstream changes its behaviour every period, through every mode:
// normal, reset mid-response, headers then hang, slow body, and refusing
// connections (its listener closed, its port held).
type turnUpstream struct {
	addr string
	mode atomic.Int32

	mu  sync.Mutex
	ln  net.Listener
	srv *http.Server
	// hold keeps the port in the refused turn (refused.HoldPort); the
	// turning goroutine's, then the cleanup's.
	hold func()
}

func startTurn(t *testing.T, ctx context.Context, period time.Duration) *turnUpstream {
	t.Helper()
	u := &turnUpstream{}
	if err := u.listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	u.addr = u.ln.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(period)
		defer tick.Stop()
		for m := int32(1); ; m = (m + 1) % turnModes {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			u.mode.Store(m)
			switch {
			case m == turnRefused:
				// The port stays the upstream's while nothing listens:
				// another test binary's listener took a freed one once,
				// and its 404s were counted as this upstream's answers.
				release, err := refused.HoldPort(u.addr)
				if err != nil {
					t.Errorf("refused turn: %v", err)
					return
				}
				u.hold = release
				u.close()
			case m == 0:
				if err := u.listen(u.addr); err != nil {
					t.Errorf("listen again on %s: %v", u.addr, err)
					return
				}
				u.hold()
			}
		}
	}()
	t.Cleanup(func() {
		<-done
		u.close()
		if u.hold != nil {
			u.hold()
		}
	})
	return u
}

func (u *turnUpstream) listen(addr string) error {
	ln, err := refused.Listen(addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(u.serve), IdleTimeout: time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	u.mu.Lock()
	u.ln, u.srv = ln, srv
	u.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
	return nil
}

func (u *turnUpstream) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.srv != nil {
		_ = u.srv.Close()
		u.srv, u.ln = nil, nil
	}
}

func (u *turnUpstream) serve(w http.ResponseWriter, r *http.Request) {
	switch u.mode.Load() {
	case turnReset:
		_, _ = io.Copy(io.Discard, r.Body)
		c, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_ = buf.Flush()
		resetMidResponse(c)
		c.Close()
	case turnHang:
		hangUpstream(w, r)
	case turnSlow:
		slowUpstream(w, r)
	default:
		okUpstream(w, r)
	}
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/rawio"
)

// TestRelay sends keep-alive requests through the relay to a real
// upstream: each answer whole, on one client connection.
func TestRelay(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "through "+r.URL.Path)
	}))
	defer up.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", up.Listener.Addr().String())
				if err != nil {
					return
				}
				defer u.Close()
				_ = relay(rawio.Wrap(c), rawio.Wrap(u))
			}()
		}
	}()
	conns := 0
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conns++
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	for _, path := range []string{"/a", "/bb", "/ccc"} {
		resp, err := c.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "through "+path {
			t.Fatalf("GET %s: %q, %v", path, b, err)
		}
	}
	if conns != 1 {
		t.Errorf("%d client connections, want 1 kept alive", conns)
	}
}

func TestContentLength(t *testing.T) {
	for _, c := range []struct {
		head string
		n    int
		ok   bool
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 12", 12, true},
		{"HTTP/1.1 200 OK\r\ncontent-length:0\r\nX: y", 0, true},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", 0, false},
		{"HTTP/1.1 200 OK\r\nContent-Length: -1", 0, false},
	} {
		if n, ok := contentLength([]byte(c.head)); n != c.n || ok != c.ok {
			t.Errorf("contentLength(%q) = %d, %v; want %d, %v", c.head, n, ok, c.n, c.ok)
		}
	}
}

// TestEpollRelay sends keep-alive requests through both of the event
// loop's waits to a real upstream, from one connection and then from
// many at once (each answer whole, its own), and ends the loop.
func TestEpollRelay(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "through "+r.URL.Path)
	}))
	defer up.Close()
	for _, mode := range []string{"poller", "raw"} {
		t.Run(mode, func(t *testing.T) {
			r, err := newEpollRelay("127.0.0.1:0", up.Listener.Addr().String(), mode == "raw")
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- r.Serve() }()
			// A loop left running holds a P (raw) for the rest of the binary.
			t.Cleanup(func() {
				if r.Close() == nil {
					<-served
				}
			})
			var conns atomic.Int32
			tr := &http.Transport{MaxIdleConnsPerHost: 16, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				conns.Add(1)
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			}}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			get := func(path string) error {
				resp, err := c.Get("http://" + r.Addr() + path)
				if err != nil {
					return err
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(b) != "through "+path {
					return fmt.Errorf("GET %s: %q, %v", path, b, err)
				}
				return nil
			}
			for _, path := range []string{"/a", "/bb", "/ccc"} {
				if err := get(path); err != nil {
					t.Fatal(err)
				}
			}
			if n := conns.Load(); n != 1 {
				t.Fatalf("%d connections for three requests in a row, want 1 (kept alive)", n)
			}
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for g := range 8 {
				wg.Go(func() {
					for i := range 50 {
						if err := get(fmt.Sprintf("/g%d/%d", g, i)); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			// The transport retries a GET on a kept connection that closes
			// unanswered: a loop that dropped connections would pass the
			// requests above, not this.
			if n := r.drops.Load(); n != 0 {
				t.Errorf("the loop closed %d connections of clients that kept them", n)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-served:
				if err != nil {
					t.Fatalf("Serve: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return after Close")
			}
		})
	}
}

// TestEpollRelayEndWithLastBytes has the client's request and its end
// (a half-close) arrive before the loop reads them, one edge for both:
// the loop must answer, then pass the client's close on to the upstream.
func TestEpollRelayEndWithLastBytes(t *testing.T) {
	for _, mode := range []string{"poller", "raw"} {
		t.Run(mode, func(t *testing.T) {
			up, upEnd := oneAnswerUpstream(t)
			r, err := newEpollRelay("127.0.0.1:0", up, mode == "raw")
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			t.Cleanup(func() {
				if r.Close() == nil {
					<-served
				}
			})
			c, err := net.Dial("tcp", r.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// Before the loop runs: the request and the end in the socket.
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond) // both there before the first read
			go func() { served <- r.Serve() }()
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(c)
			if !strings.HasSuffix(string(got), "\r\n\r\nok") {
				t.Fatalf("answer %q, %v", got, err)
			}
			if err := <-upEnd; err != io.EOF {
				t.Fatalf("the upstream's read after the answer: %v, want io.EOF (the client's close passed on)", err)
			}
		})
	}
}

// oneAnswerUpstream serves one connection: it answers one request "ok",
// then reports how its next read ended (io.EOF: the peer closed).
func oneAnswerUpstream(t *testing.T) (string, <-chan error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	end := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			end <- err
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			end <- err
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = br.ReadByte()
		end <- err
	}()
	return ln.Addr().String(), end
}

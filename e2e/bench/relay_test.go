package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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

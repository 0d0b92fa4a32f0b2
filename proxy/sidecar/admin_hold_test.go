package sidecar

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The admin port held shut (probe36 F1): peers on the pod network open
// the admin listener's places, each pipelining GET /metrics and never
// reading the answers. Their connections are busy, stuck writing, and
// before 2026-12-05 they kept every place: the kubelet's probes (from
// the node's address) and loopback's were reset for as long as they held
// them. These tests hold the sidecar's real admin listener so and ask
// /live and /ready within probeBound.

// probeBound is how long a probe may take to be answered while the port
// is held: the kubelet's own timeout is 1 s (injector), its periods 5
// and 10 s.
const probeBound = 3 * time.Second

// startAdmin runs a sidecar without policies until the test ends, after
// tune has adjusted it (before Serve), and returns it once ready with no
// admin connection open.
func startAdmin(t *testing.T, tune func(*Sidecar)) *Sidecar {
	t.Helper()
	s, err := Listen(Config{OutboundAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if tune != nil {
		tune(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		s.EndDrain()
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the sidecar did not stop within 10s")
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _ := probe(s.AdminAddr(), "127.0.0.1", "/ready", time.Second); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the sidecar was not ready within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitOpen(t, s, 0, "the readiness poll's connections")
	return s
}

// waitOpen waits until the admin listener holds n connections.
func waitOpen(t *testing.T, s *Sidecar, n int64, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.adminLn.Open() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d admin connections open after 10s, want %d", what, s.adminLn.Open(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// probe asks path once on a new connection from the address from, as the
// kubelet does (one request, then close), and returns the status, or 0
// and the error if there was no answer within bound.
func probe(addr, from, path string, bound time.Duration) (int, error) {
	d := net.Dialer{Timeout: bound, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(bound))
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\nUser-Agent: kube-probe/1.34\r\nConnection: close\r\n\r\n"); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// probeWithin asks path from the address from until it is answered 200,
// and fails the test unless that takes at most probeBound. The kubelet
// does not retry within a period; a retry here only tells "answered
// after 2 s" from "never".
func probeWithin(t *testing.T, addr, from, path string) {
	t.Helper()
	start := time.Now()
	var last error
	for time.Since(start) < probeBound {
		code, err := probe(addr, from, path, probeBound-time.Since(start))
		if err == nil && code == http.StatusOK {
			t.Logf("%s from %s: 200 after %v", path, from, time.Since(start).Round(time.Millisecond))
			return
		}
		last = err
		if err == nil {
			last = fmt.Errorf("status %d", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("%s from %s not answered 200 within %v while the admin port was held (last: %v)", path, from, probeBound, last)
}

// hold opens n connections from the address from to addr, each sending
// reqs pipelined requests for path and reading nothing, with a 4 KiB
// receive buffer (as adminhold.py). They close when the test ends.
func hold(t *testing.T, addr, from string, n, reqs int) {
	t.Helper()
	pipeline := strings.Repeat("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", reqs)
	d := net.Dialer{
		Timeout:   5 * time.Second,
		LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)},
		// Before connect, so that the window the server sees is small.
		Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) {
				_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
		},
	}
	var wg sync.WaitGroup
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("holder from %s: %v", from, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The server stops reading once stuck writing: this write
			// may never end, until the test closes the connection.
			_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			_, _ = io.WriteString(c, pipeline)
		}()
		t.Cleanup(func() { c.Close() })
	}
	t.Cleanup(wg.Wait) // runs after the closes (cleanups run last first)
}

// TestAdminHeldByPipelines is probe36's F1 on loopback: 4 peer addresses
// (127.0.0.2-5; pods on the network) hold 16 connections each, the
// per-address share, so all 64 places of the admin listener, each with
// 300 GET /metrics pipelined and never read. /live and /ready must be
// answered within probeBound from a fifth address (the kubelet, from the
// node's) and from 127.0.0.1 (a probe inside the pod). Before the fix
// both were reset for as long as the hold lasted.
func TestAdminHeldByPipelines(t *testing.T) {
	s := startAdmin(t, nil)
	addr := s.AdminAddr()
	for _, from := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"} {
		hold(t, addr, from, DefaultAdminMaxConnectionsPerSource, 300)
	}
	waitOpen(t, s, DefaultAdminMaxConnections, "the holders")
	for _, p := range []struct{ from, path string }{
		{"127.0.0.6", "/live"}, {"127.0.0.6", "/ready"},
		{"127.0.0.1", "/live"}, {"127.0.0.1", "/ready"},
		{"127.0.0.6", "/live"}, // again, while they hold on
	} {
		probeWithin(t, addr, p.from, p.path)
	}
}

// TestAdminHeldByManyPeers: 64 peer addresses hold one place each (no
// address over its fair share), pipelining and never reading. Once their
// writes have been stuck for the stuck grace (100 ms here, 1 s by
// default), a probe from another address, and one from loopback, take
// their places.
func TestAdminHeldByManyPeers(t *testing.T) {
	s := startAdmin(t, func(s *Sidecar) { s.adminLn.SetStuckGrace(100 * time.Millisecond) })
	addr := s.AdminAddr()
	for i := range DefaultAdminMaxConnections {
		hold(t, addr, fmt.Sprintf("127.0.1.%d", i+1), 1, 300)
	}
	waitOpen(t, s, DefaultAdminMaxConnections, "the holders")
	for _, p := range []struct{ from, path string }{
		{"127.0.0.6", "/live"}, {"127.0.0.6", "/ready"},
		{"127.0.0.1", "/live"}, {"127.0.0.1", "/ready"},
	} {
		probeWithin(t, addr, p.from, p.path)
	}
}

// TestAdminWriteTimeout: below the cap, a connection whose answers are
// not read is closed once an answer has waited the write timeout (200 ms
// here, admin.WriteTimeout by default), and one whose request body
// trickles in once the read timeout has passed: neither holds its place
// (nor its buffers) without end.
func TestAdminWriteTimeout(t *testing.T) {
	s := startAdmin(t, func(s *Sidecar) {
		if s.adminSrv.WriteTimeout <= 0 || s.adminSrv.ReadTimeout <= 0 || s.adminSrv.WriteTimeout > 10*time.Second || s.adminSrv.ReadTimeout > 10*time.Second {
			t.Fatalf("admin server's WriteTimeout %v, ReadTimeout %v: want each in (0, 10s]", s.adminSrv.WriteTimeout, s.adminSrv.ReadTimeout)
		}
		s.adminSrv.WriteTimeout = 200 * time.Millisecond
		s.adminSrv.ReadTimeout = 200 * time.Millisecond
	})
	addr := s.AdminAddr()
	hold(t, addr, "127.0.0.2", 1, 300)
	waitOpen(t, s, 0, "a pipeline never read, after the write timeout")

	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST /live HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx"); err != nil {
		t.Fatal(err)
	}
	waitOpen(t, s, 0, "a body trickled in, after the read timeout")
}

package sidecar

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// TestAdminHeldBusyByManyPeers: 64 peer addresses hold one admin place
// each, every connection busy (its request's body trickles in: the
// server waits for it until the 10 s read limit), none waiting, none
// stuck writing, no address over its share. A probe from another address
// must still be answered within probeBound, by taking the place of the
// connection busy longest, and the eviction is counted in
// minimesh_connections_evicted_total{listener="admin"}. Before
// 2026-12-06 the newcomer was refused until the holders' read limit ran
// out (and again as soon as they renewed their connections).
func TestAdminHeldBusyByManyPeers(t *testing.T) {
	// Told of each request the admin server starts, once watching.
	var watching atomic.Bool
	active := make(chan struct{}, 4*DefaultAdminMaxConnections)
	s := startAdmin(t, func(s *Sidecar) {
		hook := s.adminSrv.ConnState
		s.adminSrv.ConnState = func(c net.Conn, st http.ConnState) {
			hook(c, st)
			if st == http.StateActive && watching.Load() {
				select {
				case active <- struct{}{}:
				default:
				}
			}
		}
	})
	watching.Store(true)
	addr := s.AdminAddr()
	for i := range DefaultAdminMaxConnections {
		c := dialFrom(t, fmt.Sprintf("127.0.1.%d", i+1), addr)
		// The server reads the rest of the body, which never comes,
		// before it answers: the connection stays busy.
		if _, err := io.WriteString(c, "GET /live HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range DefaultAdminMaxConnections {
		select {
		case <-active:
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of the %d holders' requests began within 10s", i, DefaultAdminMaxConnections)
		}
	}
	waitOpen(t, s, DefaultAdminMaxConnections, "the holders")
	for _, path := range []string{"/ready", "/live"} {
		probeWithin(t, addr, "127.0.0.6", path)
	}
	// The first probe took a holder's place; the next ones may find the
	// place its closed connection gave back.
	if n := s.adminLn.Evicted(); n < 1 {
		t.Errorf("%d admin evictions counted, want at least the first probe's", n)
	}
	// The count is on /metrics, asked from yet another address.
	c := dialFrom(t, "127.0.0.7", addr)
	_ = c.SetDeadline(time.Now().Add(probeBound))
	io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("/metrics while held: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	ms, err := proxytest.ParseMetrics(string(body))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := ms.Value("minimesh_connections_evicted_total", "listener", "admin"); !ok || v < 1 {
		t.Errorf("minimesh_connections_evicted_total{listener=\"admin\"} = %v (present %v), want at least 1:\n%s", v, ok, grepLines(string(body), "minimesh_connections_"))
	}
}

// grepLines is the lines of s holding sub, for a failure's message.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

package sidecar

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/minimesh/minimesh/internal/connlimit"
)

// The inbound listener held shut (probe37b): one caller's address opened
// 1,030 connections that sent nothing, and before 2026-12-06 they held
// every place under the plain cap: every other caller of the pod was
// reset. These tests hold the inbound listener's cap, as the sidecar
// builds it (newInboundLimit), from 127.0.0.x addresses (distinct
// sources on Linux loopback), with connections that are relays for the
// cap (hijacked: neither idle nor new, as a detected connection is), and
// ask from another address: it must be served.

// holdServer accepts from l: each connection is hijacked for the cap, as
// the inbound dispatcher reports every redirected one, and answers 200 to
// a request line, else holds the connection until its peer closes it.
func holdServer(t *testing.T, l *connlimit.Listener) {
	t.Helper()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			l.ConnState(c, http.StateHijacked)
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil && strings.HasPrefix(line, "GET ") {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				}
			}()
		}
	}()
}

// dialFrom connects to addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestInboundHeldByOneSource: one address, or a few, holding silent
// connections do not shut out a caller from another address: at the cap
// the newcomer takes the place of the address holding the most, and a
// per-address share, when set, refuses the holder's connections past it.
// On the plain cap (before 2026-12-06) the caller was reset.
func TestInboundHeldByOneSource(t *testing.T) {
	const max = 8
	tests := []struct {
		name      string
		perSource int            // 0: none, the default
		holders   map[string]int // source address: connections it opens
		open      int64          // places held once they are all in
	}{
		{"one address fills the cap, no share (the default)", 0, map[string]int{"127.0.0.2": max}, max},
		{"one address over its share", 4, map[string]int{"127.0.0.2": 3 * max / 2}, 4},
		{"two addresses fill the cap", 4, map[string]int{"127.0.0.2": 4, "127.0.0.3": 4}, max},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			l := newInboundLimit(ln.(*net.TCPListener), Config{MaxInboundConnections: max, MaxInboundConnectionsPerSource: tt.perSource})
			t.Cleanup(func() { l.Close(); l.CloseAll() })
			holdServer(t, l)
			dialed := 0
			for src, n := range tt.holders {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
				for range n {
					// On loopback the reset of a refused connection can
					// beat connect's own return.
					if c, err := d.Dial("tcp", l.Addr().String()); err == nil {
						t.Cleanup(func() { c.Close() })
					}
					dialed++
				}
			}
			// Every holder's connection accepted or refused, by the
			// listener's own counts.
			for deadline := time.Now().Add(10 * time.Second); l.Open()+int64(l.Refused()) < int64(dialed); time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("accepted %d, refused %d of %d", l.Open(), l.Refused(), dialed)
				}
			}
			if l.Open() != tt.open {
				t.Errorf("holders hold %d places, want %d", l.Open(), tt.open)
			}
			c := dialFrom(t, "127.0.0.9", l.Addr().String())
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, werr := io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\n\r\n")
			resp, err := io.ReadAll(c)
			if !strings.HasPrefix(string(resp), "HTTP/1.1 200 ") {
				t.Errorf("the caller from another address got %q (%v, write %v); open %d, refused %d",
					resp, err, werr, l.Open(), l.Refused())
			}
		})
	}
}

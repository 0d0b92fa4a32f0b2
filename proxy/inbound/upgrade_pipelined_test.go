package inbound

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestUpgradePipelinedBytes: bytes a caller sends right behind an
// Upgrade request's head reach the app only after its 101, as the
// switched connection's first bytes (Go's ReverseProxy dropped those the
// server had read ahead); after any other answer they are never read as
// a further request into the app (request smuggling past whatever the
// caller's side checked), and the caller's connection closes.
func TestUpgradePipelinedBytes(t *testing.T) {
	const behind = "GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n"
	for _, tc := range []struct {
		name string
		code int
	}{{"101", 101}, {"403", 403}, {"200", 200}} {
		t.Run(tc.name, func(t *testing.T) {
			var smuggled atomic.Int32
			tunnel := make(chan string, 1)
			r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				if req.URL.Path == "/smuggled" {
					smuggled.Add(1)
					return
				}
				if tc.code != 101 {
					w.WriteHeader(tc.code)
					return
				}
				c, brw, err := http.NewResponseController(w).Hijack()
				if err != nil {
					return
				}
				defer c.Close()
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
				b := make([]byte, len(behind))
				n, _ := io.ReadFull(brw, b)
				tunnel <- string(b[:n])
			}), Config{})
			c, err := net.Dial("tcp", r.front)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second)) // bounds a failing test only
			io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"+behind)
			if tc.code == 101 {
				select {
				case got := <-tunnel:
					if got != behind {
						t.Fatalf("the switched connection's first bytes: %q, want %q", got, behind)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("the app never got the bytes the caller sent behind the handshake")
				}
				return
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("the connection was left open after the answer (%v)", err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(got))), nil)
			if err != nil || resp.StatusCode != tc.code || !resp.Close || strings.Count(string(got), "HTTP/1.1 ") != 1 {
				t.Errorf("the caller got %q, want one %d with Connection: close", got, tc.code)
			}
			if n := smuggled.Load(); n != 0 {
				t.Errorf("the app got the bytes behind the Upgrade as %d request(s)", n)
			}
		})
	}
}

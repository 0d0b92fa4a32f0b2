package leanhttp

import (
	"slices"
	"strings"
	"testing"
)

// TestTE10GuardFollowsH2CUpgrade: a request whose Upgrade fields each
// name h2c alone stays HTTP (the sidecar's handlers serve it as a plain
// request on a kept connection), so the guard follows the heads behind
// it and spoils an HTTP/1.0 one with Transfer-Encoding, as behind a head
// whose first Upgrade field is empty; behind any other Upgrade (another
// protocol, a list, a folded value with more in it) it stops following,
// as the handlers close such a connection or switch it. Before, any
// Upgrade field stopped it: a kept connection behind an h2c upgrade was
// left unguarded.
func TestTE10GuardFollowsH2CUpgrade(t *testing.T) {
	const lookalike = "GET /smuggle HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	for _, tc := range []struct {
		upgrade string // the Upgrade lines of the first head
		follows bool
	}{
		{"Upgrade: h2c\r\n", true},
		{"upgrade:H2C\r\n", true},
		{"Upgrade: \th2c \t\r\n", true},
		{"Upgrade: h2c\r\nUpgrade: h2c\r\n", true},
		{"Upgrade: websocket\r\n", false},
		{"Upgrade: h2c, websocket\r\n", false},
		{"Upgrade: h2c,\r\n", false},
		{"Upgrade: h2\r\n", false},
		{"Upgrade: h2cx\r\n", false},
		{"Upgrade: h2c x\r\n", false},
		// A first Upgrade field that is empty is none to the handlers
		// (net/http's Header.Get), whatever follows: they keep the
		// connection, so the guard must follow it (it stopped before
		// 2026-12-06: a second request was smuggled behind each of these).
		{"Upgrade:\r\n", true},
		{"Upgrade: \r\n", true},
		{"Upgrade:\r\nUpgrade: h2c\r\n", true},
		{"Upgrade:\r\nUpgrade: websocket\r\n", true},
		// A fold that adds only white space leaves "h2c" (net/textproto
		// joins with a space, the handlers trim it); one with more in it
		// is another value.
		{"Upgrade: h2c\r\n \r\n", true},
		{"Upgrade: h2c\r\n\t\r\n", true},
		{"Upgrade:\r\n h2c\r\n", true},
		{"Upgrade:\r\n websocket\r\n", false},
		{"Upgrade: h2\r\n c\r\n", false},
		// An empty field after h2c: the handlers close such a connection.
		{"Upgrade: h2c\r\nUpgrade:\r\n", true},
		{"Upgrade: h2c\r\nUpgrade: websocket\r\n", false},
		{"Upgrade: h2c\r\n websocket\r\n", false}, // obs-fold: net/http reads "h2c websocket"
	} {
		head := "GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n" + tc.upgrade + "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
		raw := head + lookalike
		for i := range len(raw) + 1 {
			var g TE10Guard
			b := []byte(raw)
			g.Scan(b[:i])
			g.Scan(b[i:])
			if got := string(b[:len(head)]); got != head {
				t.Fatalf("%q split at %d: the head was changed: %q", tc.upgrade, i, got)
			}
			spoiled := !strings.Contains(string(b[len(head):]), "Transfer-Encoding:")
			if spoiled != tc.follows {
				t.Fatalf("%q split at %d: the HTTP/1.0 head behind it spoiled %v, want %v", tc.upgrade, i, spoiled, tc.follows)
			}
		}
	}
}

// TestTE10GuardContentLengthSpellings: a Content-Length net/http reads
// but the guard did not (folded onto a second line, or with more than 18
// digits of which the first are zeros) had the guard stop following a
// connection net/http kept, and an HTTP/1.0 request with
// Transfer-Encoding behind it smuggled a request to the handler (a
// review, 2026-12-06). Zero-padded lengths are read; a folded one is
// spoiled into a line net/http refuses: 400 and close, nothing served.
func TestTE10GuardContentLengthSpellings(t *testing.T) {
	const behind = "POST /te HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"GET /smuggled HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
	for _, tc := range []struct {
		cl    string
		codes []int // the answers until the connection closes
	}{
		{"Content-Length: 0000000000000000004\r\n", []int{200, 400}},
		{"Content-Length: 00000000000000000000000000000004\r\n", []int{200, 400}},
		{"Content-Length:\r\n 4\r\n", []int{400}},
		{"Content-Length:\r\n\t4\r\n", []int{400}},
		{"Content-Length: 4\r\nContent-Length:\n 4\r\n", []int{400}},
		{"Content-Length: 4\r\n", []int{200, 400}},
	} {
		for _, lean := range []bool{true, false} {
			s := startTE10Server(t, lean)
			codes, closed := answersUntilClose(t, s.addr, "POST /before HTTP/1.1\r\nHost: a\r\n"+tc.cl+"\r\nbody"+behind)
			got := s.requests()
			if !closed || !slices.Equal(codes, tc.codes) || slices.Contains(got, "/smuggled") || slices.Contains(got, "/te") {
				t.Errorf("lean %v, %q: answers %v (closed %v), handler saw %q; want %v, then the close, nothing behind served",
					lean, tc.cl, codes, closed, got, tc.codes)
			}
		}
	}
}

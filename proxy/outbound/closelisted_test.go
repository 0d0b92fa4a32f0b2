package outbound_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// TestConnectionListedBesideCloseDropped: a field an upstream's
// Connection lists beside close never reaches the app, whatever the
// size of the head: http.ReadResponse deletes such a Connection field,
// and the fast transport read the names from its buffer only when the
// whole head was in it (4 KiB), so that one 5 KiB cookie let X-Secret
// through (RFC 9110 §7.6.1: a proxy removes every field Connection
// names). The same for a 1xx head (the same loop); and a 1xx's
// Connection-listed fields without close are dropped on every path,
// where every one passed them on (the ReverseProxy's hook copies a 1xx
// whole). A request that goes through Go's http.Transport (a streamed
// body, --std-transport) still gets a field listed beside close: the
// known gap of docs/operations.md, asserted as such here so that its
// end is noticed.
func TestConnectionListedBesideCloseDropped(t *testing.T) {
	const cookie = 4 << 10 // bytes of each padding cookie's value
	// The upstream answers every request on a connection, as the query
	// asks: conn is its Connection field, pad the number of cookies,
	// hint a 103 with the same fields first.
	up := loopUpstream(t, func(w *bufio.Writer, req *http.Request) {
		q := req.URL.Query()
		pad, _ := strconv.Atoi(q.Get("pad"))
		var fields strings.Builder
		fmt.Fprintf(&fields, "Connection: %s\r\n", q.Get("conn"))
		for i := range pad {
			fmt.Fprintf(&fields, "Set-Cookie: c%d=%s\r\n", i, strings.Repeat("v", cookie))
		}
		if q.Get("hint") != "" {
			fmt.Fprintf(w, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nX-Hint-Secret: h\r\n%s\r\n",
				strings.ReplaceAll(fields.String(), "X-Secret", "X-Hint-Secret"))
		}
		fmt.Fprintf(w, "HTTP/1.1 200 OK\r\n%sX-Secret: s\r\nX-Kept: k\r\nContent-Length: 2\r\n\r\nok", fields.String())
	})
	std := proxytest.StdTransport()
	// Retries make the forwarder hold a small body whole, for the fast
	// transport, with either server (the lean one holds it anyway when
	// it came with the head).
	retries := policyDoc("geo", "geo-service", "retries: {attempts: 1, retryOn: [reset]}")
	paths := []struct {
		name    string
		fast    bool   // withFastTransport: the fast transport in every pass
		body    string // POST with this body
		chunked bool   // of unknown length: always http.Transport
	}{
		{name: "GET, fast", fast: true},
		{name: "GET"},
		{name: "POST, small body", body: "hi"},
		{name: "POST, small body, fast", body: "hi", fast: true},
		{name: "POST, chunked body", body: "hi", chunked: true},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			var opts []sidecarOpt
			if p.fast {
				opts = append(opts, withFastTransport())
			}
			sc := startSidecar(t, retries, resolve(up, geo), opts...)
			viaTransport := p.chunked || std && !p.fast
			for _, tc := range []struct {
				conn  string
				pad   int
				hint  bool
				close bool // Connection lists close
			}{
				{conn: "close, X-Secret", close: true},
				{conn: "close, X-Secret", pad: 1, close: true}, // 5 KiB: past the reader's 4 KiB
				{conn: "X-Secret, close", pad: 1, close: true},
				{conn: "x-secret,CLOSE", pad: 10, close: true}, // 40 KiB
				{conn: "close, X-Secret", pad: 1, hint: true, close: true},
				{conn: "close, X-Secret", hint: true, close: true},
				{conn: "close,\r\n X-Secret", close: true},          // obs-fold: the names go on in the next line
				{conn: "close,\r\n\tX-Secret", pad: 1, close: true}, // and past the buffer
				{conn: "X-Secret", pad: 1},
				{conn: "X-Secret", pad: 1, hint: true},
			} {
				name := fmt.Sprintf("%q/%d cookies/hint %v", tc.conn, tc.pad, tc.hint)
				t.Run(name, func(t *testing.T) {
					target := fmt.Sprintf("http://%s/?conn=%s&pad=%d", geo, url.QueryEscape(tc.conn), tc.pad)
					if tc.hint {
						target += "&hint=1"
					}
					var mu sync.Mutex
					var hints []textproto.MIMEHeader
					trace := &httptrace.ClientTrace{Got1xxResponse: func(_ int, h textproto.MIMEHeader) error {
						mu.Lock()
						defer mu.Unlock()
						hints = append(hints, h)
						return nil
					}}
					ctx := httptrace.WithClientTrace(context.Background(), trace)
					method, body := http.MethodGet, io.Reader(nil)
					if p.body != "" {
						method, body = http.MethodPost, strings.NewReader(p.body)
						if p.chunked {
							body = io.MultiReader(body) // no length
						}
					}
					req, err := http.NewRequestWithContext(ctx, method, target, body)
					if err != nil {
						t.Fatal(err)
					}
					resp, got := fetch(t, sc.Client(), req)
					if resp.StatusCode != http.StatusOK || string(got) != "ok" || resp.Header.Get("X-Kept") != "k" {
						t.Fatalf("status %d, body %q, X-Kept %q", resp.StatusCode, got, resp.Header.Get("X-Kept"))
					}
					if n := len(resp.Header["Set-Cookie"]); n != tc.pad {
						t.Errorf("the app got %d cookies, want %d", n, tc.pad)
					}
					leak := tc.close && viaTransport
					_, secret := resp.Header["X-Secret"]
					mu.Lock()
					defer mu.Unlock()
					if tc.hint != (len(hints) == 1) {
						t.Fatalf("the app got %d 103s, want hint %v", len(hints), tc.hint)
					}
					var hintSecret bool
					for _, h := range hints {
						_, hintSecret = h["X-Hint-Secret"]
						if h.Get("Link") != "</a.css>; rel=preload" {
							t.Errorf("the app's 103 has Link %q, want the upstream's", h.Get("Link"))
						}
					}
					switch {
					case leak && (!secret || tc.hint && !hintSecret):
						t.Errorf("X-Secret %v, X-Hint-Secret %v: a field listed beside close dropped through http.Transport, "+
							"the known gap closed: update docs/operations.md and this test", secret, hintSecret)
					case !leak && secret:
						t.Errorf("the app got X-Secret %q, a field for the sidecar's hop alone", resp.Header["X-Secret"])
					case !leak && hintSecret:
						t.Error("the app's 103 has X-Hint-Secret, a field for the sidecar's hop alone")
					}
				})
			}
		})
	}
}

// loopUpstream is an HTTP/1.1 upstream on loopback that answers every
// request of a connection with what answer writes (raw bytes, so that
// a head may be any), after reading its body; it closes the connection
// after an answer whose Connection lists close, or at the first error.
func loopUpstream(t *testing.T, answer func(w *bufio.Writer, req *http.Request)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn // closed at the end: the sidecar may keep one
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				br, bw := bufio.NewReader(c), bufio.NewWriter(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if _, err := io.Copy(io.Discard, req.Body); err != nil {
						return
					}
					answer(bw, req)
					if bw.Flush() != nil || strings.Contains(strings.ToLower(req.URL.Query().Get("conn")), "close") {
						return
					}
				}
			})
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-accepting
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

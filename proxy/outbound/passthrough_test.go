package outbound_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
	"github.com/minimesh/minimesh/proxy/sidecar"
)

// sniffBait is a body http.DetectContentType calls text/html.
const sniffBait = "<html><script>alert(1)</script>"

// TestUpstreamContentTypeNotAdded: an upstream's response without a
// Content-Type reaches the app without one on every path: the fast path
// (its head as lines, and as a header map), the ReverseProxy (a request
// with a body, or --std-transport), HTTP/2; through both HTTP/1 servers.
// A server's sniffed text/html would defeat the upstream's nosniff and
// make an echo of a caller's bytes a page that runs their script. A
// Content-Type the upstream sent passes as it is.
func TestUpstreamContentTypeNotAdded(t *testing.T) {
	// The upstream's answer as bytes, with its own fields; hop makes
	// its head one the fast path reads into a map (a hop-by-hop field).
	raw := func(fields string) func(c net.Conn, req *http.Request) {
		return func(c net.Conn, req *http.Request) {
			_, _ = io.Copy(io.Discard, req.Body)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Content-Type-Options: nosniff\r\n"+fields+
				"Content-Length: 31\r\n\r\n"+sniffBait)
		}
	}
	h2up := startH2CUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if ct := r.Header.Get("X-Send-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		} else {
			w.Header()["Content-Type"] = nil // none
		}
		_, _ = io.WriteString(w, sniffBait)
	})
	cases := []struct {
		name   string
		fields string // the upstream's (HTTP/1)
		post   bool   // a chunked request body: the ReverseProxy
		std    bool   // --std-transport
		h2     bool   // h2c both ways
		want   []string
	}{
		{name: "fast path, lines"},
		{name: "fast path, map", fields: "Keep-Alive: timeout=5\r\n"},
		{name: "reverse proxy", post: true},
		{name: "std transport", std: true},
		{name: "h2c", h2: true},
		{name: "typed, fast path", fields: "Content-Type: text/plain\r\n", want: []string{"text/plain"}},
		{name: "typed, reverse proxy", fields: "Content-Type: text/plain\r\n", post: true, want: []string{"text/plain"}},
		{name: "typed, h2c", h2: true, want: []string{"text/plain"}},
	}
	for _, server := range []string{sidecar.ServerLean, sidecar.ServerStd} {
		for _, tc := range cases {
			t.Run(server+"/"+tc.name, func(t *testing.T) {
				up, _ := newRawUpstream(t, raw(tc.fields))
				if tc.h2 {
					up = h2up
				}
				opts := []sidecarOpt{withServer(server)}
				if tc.std {
					opts = append(opts, withStdTransport())
				}
				sc := startSidecar(t, "", resolve(up, geo), opts...)
				c := sc.Client()
				var body io.Reader
				method := http.MethodGet
				if tc.post {
					method, body = http.MethodPost, io.MultiReader(strings.NewReader("x")) // no length: chunked
				}
				req, err := http.NewRequest(method, "http://"+geo+"/echo", body)
				if err != nil {
					t.Fatal(err)
				}
				if tc.h2 {
					c = h2cClient(t)
					req.URL.Host, req.Host = sc.Addr, geo
					if tc.want != nil {
						req.Header.Set("X-Send-Type", tc.want[0])
					}
				}
				resp, got := fetch(t, c, req)
				if tc.h2 && resp.ProtoMajor != 2 {
					t.Fatalf("answered over %s, want HTTP/2", resp.Proto)
				}
				if !bytes.Equal(got, []byte(sniffBait)) {
					t.Fatalf("status %d, body %q", resp.StatusCode, got)
				}
				if ct, ok := resp.Header["Content-Type"]; ok != (tc.want != nil) || tc.want != nil && strings.Join(ct, ",") != tc.want[0] {
					t.Errorf("the app got Content-Type %q, want %q", ct, tc.want)
				}
			})
		}
	}
}

// TestUpstreamConnectionListedDropped: the fields an upstream's
// Connection lists are dropped on the fast path also when it lists
// close, which makes http.ReadResponse delete the Connection field
// before anything sees what it listed.
func TestUpstreamConnectionListedDropped(t *testing.T) {
	if proxytest.StdTransport() {
		t.Skip("through http.Transport the names are lost (docs/operations.md): the fast path only")
	}
	for _, conn := range []string{"X-Secret, close", "close, X-Secret", "X-Secret", "x-secret,close"} {
		t.Run(conn, func(t *testing.T) {
			up, _ := newRawUpstream(t, func(c net.Conn, _ *http.Request) {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: "+conn+"\r\nX-Secret: s\r\nX-Kept: k\r\nContent-Length: 2\r\n\r\nok")
			})
			sc := startSidecar(t, "", resolve(up, geo))
			resp, body := get(t, sc.Client(), "http://"+geo+"/")
			if string(body) != "ok" || resp.Header.Get("X-Kept") != "k" {
				t.Fatalf("status %d, body %q, header %v", resp.StatusCode, body, resp.Header)
			}
			if v, ok := resp.Header["X-Secret"]; ok {
				t.Errorf("the app got X-Secret %q, a field for the sidecar's hop alone", v)
			}
		})
	}
}

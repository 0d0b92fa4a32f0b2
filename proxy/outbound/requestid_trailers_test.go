package outbound_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestRequestIDNotInTrailers: the answer's X-Request-ID is the sidecar's
// alone, in its header: one the upstream sends in its trailers, announced
// (Trailer:) or not, over HTTP/1.1 or h2c, is dropped, announcement
// included, while its other trailers pass on. Before 2026-12-06 the app
// got the upstream's in the trailers, a second ID for the same request.
func TestRequestIDNotInTrailers(t *testing.T) {
	const appID = "app-id-1"
	h1 := func(announce string) string {
		addr, _ := newRawUpstream(t, func(c net.Conn, _ *http.Request) {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\n%sTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Request-ID: upstream-trailer-id\r\nX-Other: kept\r\n\r\n", announce)
		})
		return addr
	}
	h2 := func(announce bool) string {
		return startH2CUpstream(t, func(w http.ResponseWriter, _ *http.Request) {
			if announce {
				w.Header().Set("Trailer", "X-Request-Id, X-Other")
			}
			_, _ = w.Write([]byte("ok"))
			if announce {
				w.Header().Set("X-Request-Id", "upstream-trailer-id")
				w.Header().Set("X-Other", "kept")
			} else {
				w.Header().Set(http.TrailerPrefix+"X-Request-Id", "upstream-trailer-id")
				w.Header().Set(http.TrailerPrefix+"X-Other", "kept")
			}
		})
	}
	for _, tc := range []struct {
		name string
		addr string
		h2c  bool
	}{
		{"HTTP/1.1 announced", h1("Trailer: X-Request-ID, X-Other\r\n"), false},
		{"HTTP/1.1 unannounced", h1(""), false},
		{"h2c announced", h2(true), true},
		{"h2c unannounced", h2(false), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := startSidecar(t, "", resolve(tc.addr, geo))
			req, _ := http.NewRequest(http.MethodGet, "http://"+geo+"/", nil)
			c := sc.Client()
			if tc.h2c {
				req, _ = http.NewRequest(http.MethodGet, "http://"+sc.Addr+"/", nil)
				req.Host = geo
				c = h2cClient(t)
			}
			req.Header.Set("X-Request-ID", appID)
			resp, body := fetch(t, c, req)
			if resp.StatusCode != 200 || string(body) != "ok" {
				t.Fatalf("%d %q, want the upstream's 200 ok", resp.StatusCode, body)
			}
			if got := resp.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != appID {
				t.Errorf("X-Request-ID %q in the header, want only %q", got, appID)
			}
			if got, ok := resp.Trailer["X-Request-Id"]; ok {
				t.Errorf("X-Request-ID %q in the trailers (announced or sent), want none", got)
			}
			if got := resp.Trailer.Get("X-Other"); got != "kept" {
				t.Errorf("trailer X-Other %q, want the upstream's %q (trailers %v)", got, "kept", resp.Trailer)
			}
		})
	}
}

// TestRequestIDNotInRequestTrailers: an app's request trailers never
// reach the upstream (Go's ReverseProxy sends a copy of their map made
// before the body, and the fast path takes no request with trailers), so
// no X-Request-ID of the app's reaches it in them either: the upstream's
// request ID is the one in the request's header.
func TestRequestIDNotInRequestTrailers(t *testing.T) {
	got := make(chan http.Header, 1)
	addr, _ := newRawUpstream(t, func(c net.Conn, req *http.Request) {
		_, _ = io.Copy(io.Discard, req.Body)
		got <- req.Trailer
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	sc := startSidecar(t, "", resolve(addr, geo))
	c := dialSidecar(t, sc)
	_, _ = io.WriteString(c, "POST http://"+geo+"/ HTTP/1.1\r\nHost: "+geo+"\r\nTrailer: X-Request-ID\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Request-ID: app-trailer-id\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if tr := <-got; len(tr.Values("X-Request-Id")) > 0 || strings.Contains(fmt.Sprint(tr), "app-trailer-id") {
		t.Errorf("the upstream got the app's request trailers %v", tr)
	}
}

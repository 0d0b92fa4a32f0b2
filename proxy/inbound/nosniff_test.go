package inbound

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAppContentTypeNotAdded: the app's response without a Content-Type
// reaches the caller without one, over HTTP/1 and h2c: a sniffed
// text/html would defeat the app's nosniff. One the app sent passes as
// it is, and one posted body (the ReverseProxy's streamed copy) as well.
func TestAppContentTypeNotAdded(t *testing.T) {
	const bait = "<html><script>alert(1)</script>"
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.Copy(io.Discard, req.Body)
		if ct := req.Header.Get("X-Send-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		} else {
			w.Header()["Content-Type"] = nil // the app sends none
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = io.WriteString(w, bait)
	}), Config{})
	// The same handler behind an h2c front.
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	h2front := httptest.NewUnstartedServer(r.h)
	h2front.Config.Protocols = &p
	h2front.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return r.h.WithOriginalDst(ctx, r.app)
	}
	h2front.Start()
	t.Cleanup(h2front.Close)
	var cp http.Protocols
	cp.SetUnencryptedHTTP2(true) // prior knowledge
	h2c := &http.Transport{Protocols: &cp}
	t.Cleanup(h2c.CloseIdleConnections)

	for _, tc := range []struct {
		name string
		h2   bool
		post bool
		want string // the app's Content-Type, "" none
	}{
		{name: "HTTP/1"},
		{name: "HTTP/1 post", post: true},
		{name: "h2c", h2: true},
		{name: "HTTP/1 typed", want: "text/plain"},
		{name: "h2c typed", h2: true, want: "text/plain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, c := r.front, http.DefaultClient
			if tc.h2 {
				addr, c = h2front.Listener.Addr().String(), &http.Client{Transport: h2c}
			}
			var body io.Reader
			method := http.MethodGet
			if tc.post {
				method, body = http.MethodPost, io.MultiReader(strings.NewReader("x")) // chunked
			}
			req, _ := http.NewRequest(method, "http://"+addr+"/x", body)
			if tc.want != "" {
				req.Header.Set("X-Send-Type", tc.want)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(got) != bait {
				t.Fatalf("status %d, body %q, %v", resp.StatusCode, got, err)
			}
			if tc.h2 && resp.ProtoMajor != 2 {
				t.Fatalf("answered over %s, want HTTP/2", resp.Proto)
			}
			if ct, ok := resp.Header["Content-Type"]; ok != (tc.want != "") || strings.Join(ct, ",") != tc.want {
				t.Errorf("the caller got Content-Type %q, want %q", ct, tc.want)
			}
		})
	}
}

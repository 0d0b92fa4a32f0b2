package outbound_test

import (
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"

	"github.com/minimesh/minimesh/proxy/sidecar"
)

// TestH2BodyOverLimitKeepsConnection: an HTTP/2 request whose body is
// over --max-request-body-bytes, by its content-length (its 413 before
// any try) or as it is read (no content-length), is answered 413 on its
// stream alone: the app's connection goes on. Connection: close on the
// answer, right for HTTP/1.x where the unread body cannot be told from a
// next request, made Go's HTTP/2 server send a GOAWAY, and every later
// call dialled again (a review, 2026-12-06).
func TestH2BodyOverLimitKeepsConnection(t *testing.T) {
	u := startH2CUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	})
	const svc = "big-svc.test:8000"
	sc := startSidecar(t, "", resolve(u, svc), func(c *sidecar.Config) { c.MaxRequestBody = 10 })
	cl := h2cClient(t)
	do := func(body io.Reader, length int64) (int, string) {
		t.Helper()
		var local string
		req, err := http.NewRequest(http.MethodPost, "http://"+sc.Addr+"/x", body)
		if err != nil {
			t.Fatal(err)
		}
		req.Host, req.ContentLength = svc, length
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { local = i.Conn.LocalAddr().String() }}))
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, local
	}
	code, first := do(strings.NewReader("small"), 5)
	if code != http.StatusOK {
		t.Fatalf("a small body: %d, want 200", code)
	}
	for _, tc := range []struct {
		name   string
		body   func() io.Reader
		length int64
	}{
		{"content-length over the limit", func() io.Reader { return strings.NewReader(strings.Repeat("b", 100)) }, 100},
		{"no content-length, over as read", func() io.Reader { return io.MultiReader(strings.NewReader(strings.Repeat("b", 100))) }, -1},
	} {
		if code, _ := do(tc.body(), tc.length); code != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: %d, want 413", tc.name, code)
		}
		if code, local := do(strings.NewReader("small"), 5); code != http.StatusOK || local != first {
			t.Errorf("%s: the next call %d on %s, want 200 on the same connection %s (no GOAWAY)", tc.name, code, local, first)
		}
	}
}

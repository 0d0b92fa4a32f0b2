package promtext

import (
	"compress/gzip"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHandler: the text format's content type, the same body plain or
// gzipped, and promhttp's error counter at zero.
func TestHandler(t *testing.T) {
	r := NewRegistry()
	c := NewCounterVec("x_total", "X.")
	c.With().Add(3)
	r.MustRegister(c)
	h := r.Handler()
	get := func(acceptEncoding string) (string, *httptest.ResponseRecorder) {
		req := httptest.NewRequest("GET", "/metrics", nil)
		if acceptEncoding != "" {
			req.Header.Set("Accept-Encoding", acceptEncoding)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		body := io.Reader(w.Body)
		if w.Header().Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(w.Body)
			if err != nil {
				t.Fatal(err)
			}
			body = zr
		}
		b, err := io.ReadAll(body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b), w
	}
	plain, w := get("")
	if ct := w.Header().Get("Content-Type"); ct != "text/plain; version=0.0.4; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if w.Header().Get("Content-Encoding") != "" {
		t.Errorf("Content-Encoding %q without Accept-Encoding", w.Header().Get("Content-Encoding"))
	}
	want := `# HELP promhttp_metric_handler_errors_total Total number of internal errors encountered by the promhttp metric handler.
# TYPE promhttp_metric_handler_errors_total counter
promhttp_metric_handler_errors_total{cause="encoding"} 0
promhttp_metric_handler_errors_total{cause="gathering"} 0
# HELP x_total X.
# TYPE x_total counter
x_total 3
`
	if plain != want {
		t.Errorf("got\n%s\nwant\n%s", plain, want)
	}
	zipped, w := get("gzip")
	if w.Header().Get("Content-Encoding") != "gzip" || zipped != plain {
		t.Errorf("gzip: Content-Encoding %q, body\n%s", w.Header().Get("Content-Encoding"), zipped)
	}
	if r.Handler(); strings.Count(string(r.AppendText(nil)), "# TYPE promhttp") != 1 {
		t.Error("a second Handler registered the error counter again")
	}
}

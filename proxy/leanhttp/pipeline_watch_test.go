//go:build probe

package leanhttp

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// TestPipelineDuringWatch: the next requests arrive while a slow one is
// served and watched (the watch reads their first byte): the answers are
// net/http's, in order (a differential probe, session 27).
func TestPipelineDuringWatch(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(250 * time.Millisecond)
		}
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, r.Method+" "+r.URL.Path+" "+string(b)+" "+r.Header.Get("X-A"))
	})
	p := startPair(t, h)
	slow := "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"
	cases := [][]string{
		{slow, "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"},
		{slow, "G", "ET /2 HTTP/1.1\r\nHost: a\r\n\r\n"},
		{slow, "GET /2 HTTP/1.1\r\nHost: a\r\n\r\nPOST /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"},
		{slow, "POST /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab", "c"},
		{slow, "GET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n\r\n"},
		{slow, "GET /2 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n", "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n", "GET /4 HTTP/1.1\r\nHost: a\r\n\r\n"},
		{slow, "XYZ"},
	}
	samePieces(t, p, cases)
}

func samePieces(t *testing.T, p *pair, cases [][]string) {
	t.Helper()
	for _, pieces := range cases {
		var std, lean string
		done := make(chan struct{})
		go func() { std, _ = trickle2(t, p.std, pieces, 120*time.Millisecond); close(done) }()
		lean, _ = trickle2(t, p.lean, pieces, 120*time.Millisecond)
		<-done
		if normalize([]byte(std)) != normalize([]byte(lean)) {
			t.Errorf("%q:\nstd:  %q\nlean: %q", pieces, normalize([]byte(std)), normalize([]byte(lean)))
		}
	}
}

func trickle2(t *testing.T, addr string, pieces []string, gap time.Duration) (string, bool) {
	t.Helper()
	c := dialOn(t, addr)
	defer c.Close()
	for i, p := range pieces {
		if i > 0 {
			time.Sleep(gap)
		}
		if _, err := io.WriteString(c, p); err != nil {
			break
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	b, err := io.ReadAll(c)
	return string(b), err == nil
}

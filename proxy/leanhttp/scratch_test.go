package leanhttp

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestRequestHeaderPerRequest: a request on a kept connection sees none
// of the previous request's fields nor its URL (the connection's scratch
// is emptied between requests).
func TestRequestHeaderPerRequest(t *testing.T) {
	p := startPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var keys []string
		for k, vv := range r.Header {
			keys = append(keys, k+"="+strings.Join(vv, ","))
		}
		slices.Sort(keys)
		_, _ = io.WriteString(w, r.URL.String()+" "+strings.Join(keys, ";"))
	}))
	c, err := net.Dial("tcp", p.lean)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for _, tc := range []struct{ head, want string }{
		{"GET /a?q=1 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-Z: 9\r\n\r\n", "/a?q=1 X-A=1;X-Z=9"},
		{"GET /b HTTP/1.1\r\nHost: a\r\nX-B: 2\r\n\r\n", "/b X-B=2"},
		{"GET /c HTTP/1.1\r\nX-C: 3\r\nHost: a\r\n\r\n", "/c X-C=3"},
		{"GET http://h/d HTTP/1.1\r\nHost: a\r\n\r\n", "http://h/d "},
	} {
		if _, err := io.WriteString(c, tc.head); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != tc.want {
			t.Errorf("%q: handler saw %q, want %q", tc.head, b, tc.want)
		}
	}
}

// TestNewRequestAppendCopies: a handler's Add to one field copies its
// values, never writing over the next field's in the shared slice.
func TestNewRequestAppendCopies(t *testing.T) {
	var sc reqScratch
	var r http.Request
	newRequest([]byte("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n"), &sc, &r)
	r.Header.Add("A", "x")
	if got := r.Header["B"]; len(got) != 1 || got[0] != "2" {
		t.Fatalf("B = %q after an Add to A, want [2]", got)
	}
}

// TestWriteFieldsFallbackExcludes: past eight keys WriteSubset writes
// them, still without the excluded ones.
func TestWriteFieldsFallbackExcludes(t *testing.T) {
	h := http.Header{}
	for i := range 10 {
		h.Set("K"+string(rune('0'+i)), "v")
	}
	compareFields(t, h, map[string]bool{"K3": true})
}

// TestNewRequestAllocs: in a connection's scratch, the common request
// costs one allocation, its head as a string: no map, no values, no URL
// (plainTarget), origin-form and absolute-form alike. A head whose names
// are spelled otherwise (Node's fetch sends them in lower case) costs
// one more, its copy with the names canonical, however many names
// textproto would not have found among its common ones; every one gives
// its lines.
func TestNewRequestAllocs(t *testing.T) {
	for head, want := range map[string]float64{
		"GET /api/v1/x?id=3 HTTP/1.1\r\nHost: a\r\nUser-Agent: u\r\nAccept: */*\r\n\r\n": 1,
		"GET http://svc:8080/x HTTP/1.1\r\nHost: svc:8080\r\nUser-Agent: u\r\n\r\n":      1,
		"GET /p HTTP/1.1\r\nhost: a\r\nconnection: keep-alive\r\naccept: */*\r\naccept-language: *\r\n" +
			"sec-fetch-mode: cors\r\nuser-agent: node\r\naccept-encoding: gzip, deflate\r\n\r\n": 2,
	} {
		var sc reqScratch
		var r http.Request
		b := []byte(head)
		if allocs := testing.AllocsPerRun(100, func() {
			r = http.Request{}
			if !newRequest(b, &sc, &r) || !sc.lined {
				t.Fatalf("newRequest(%q) declined, or gave no lines", head)
			}
			sc.reset()
		}); allocs != want {
			t.Errorf("newRequest(%q): %v allocations, want %v", head, allocs, want)
		}
	}
}

// TestRequestContextHook: the context RequestContext returns is the
// request's, and it ends when the request does, as the loop's own.
func TestRequestContextHook(t *testing.T) {
	type key struct{}
	done := make(chan context.Context, 1)
	s := New(newServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Context().Value(key{}) != "state" {
			t.Errorf("the handler's context lacks the hook's value")
		}
		done <- r.Context()
	}), io.Discard))
	s.RequestContext = func(ctx, _ context.Context) context.Context {
		return context.WithValue(ctx, key{}, "state")
	}
	addr := serveOn(t, s)
	c := dialOn(t, addr)
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	<-(<-done).Done() // ended with the request, or the test times out
}

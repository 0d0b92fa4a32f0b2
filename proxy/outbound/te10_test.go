package outbound_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHTTP10TransferEncodingRefused: an HTTP/1.0 request with
// Transfer-Encoding gets 400 and its connection closes, on the sidecar's
// outbound listener with either server (the suite's MINIMESH_TEST_SERVER
// pass runs it with --server=std, where net/http alone serves). net/http
// ignores the field in HTTP/1.0 (golang/go#12785): the request went
// upstream without its body, and the body, here a second request, was
// read and sent upstream as the connection's next request.
func TestHTTP10TransferEncodingRefused(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		mu.Unlock()
	}))
	defer up.Close()
	sc := startSidecar(t, "", nil)
	host := strings.TrimPrefix(up.URL, "http://")
	smuggled := "GET http://" + host + "/smuggled HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
	for _, te := range []string{"chunked", "Chunked", "gzip, chunked"} {
		t.Run(te, func(t *testing.T) {
			c, err := net.Dial("tcp", sc.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = io.WriteString(c, "POST http://"+host+"/te10 HTTP/1.0\r\nHost: "+host+
				"\r\nConnection: keep-alive\r\nTransfer-Encoding: "+te+"\r\n\r\n"+smuggled)
			if err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			var codes []int
			for {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					break // the end of the connection (or its deadline: codes tell)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				codes = append(codes, resp.StatusCode)
			}
			if len(codes) != 1 || codes[0] != http.StatusBadRequest {
				t.Errorf("answers %v before the connection ended, want one 400", codes)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(seen) != 0 {
				t.Errorf("the upstream saw %q, want nothing", seen)
			}
		})
	}
}

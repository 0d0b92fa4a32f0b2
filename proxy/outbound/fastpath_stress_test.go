package outbound

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/proxytest"
)

// TestFastPathNoDesync: 16 goroutines share the fast transport's pool
// against an upstream whose answers take every shape the pool must get
// right (chunked, cut short, 103 first, Connection: close, 204, split
// over segments, closed unannounced, HEAD with a length, a second answer
// unasked), while some requests are cancelled mid-way. Each answer names its request: whatever
// fails, no request gets another's answer. (Found sound in a review; kept
// so that it stays so.)
func TestFastPathNoDesync(t *testing.T) {
	addr, _ := proxytest.RawServer(t, func(c net.Conn, n int) {
		defer c.Close()
		rnd := rand.New(rand.NewPCG(uint64(n), 1))
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			id := strings.TrimPrefix(req.URL.Path, "/")
			r := rnd.IntN(12)
			if r == 0 {
				time.Sleep(time.Duration(rnd.IntN(3)) * time.Millisecond) // an answer that takes a while
			}
			switch {
			case req.Method == http.MethodHead:
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Id: %s\r\nContent-Length: 100\r\n\r\n", id)
			case r == 1:
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(id), id)
			case r == 2:
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(id)+5, id)
				return // cut short
			case r == 3:
				fmt.Fprintf(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(id), id)
			case r == 4:
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(id), id)
				return
			case r == 5:
				fmt.Fprintf(c, "HTTP/1.1 204 No Content\r\nX-Id: %s\r\n\r\n", id)
			case r == 6:
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Le")
				time.Sleep(time.Millisecond) // the rest in a segment of its own
				fmt.Fprintf(c, "ngth: %d\r\n\r\n%s", len(id), id)
			case r == 8:
				// A second answer nobody asked for, in the same write: it
				// must never become the next request's.
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%sHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale", len(id), id)
			case r == 7:
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(id), id)
				return // closed without a word
			default:
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(id), id)
			}
		}
	})
	ft := newTestFast()
	ft.maxIdle = 8
	defer ft.CloseIdleConnections()
	const workers, each = 16, 300
	var answered atomic.Int64
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(g), 2))
			for i := range each {
				id := strconv.Itoa(g*1000 + i)
				// Bounded: a desynced connection may wait for an answer that
				// is not coming.
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if rnd.IntN(10) == 0 {
					time.AfterFunc(time.Duration(rnd.IntN(500))*time.Microsecond, cancel)
				}
				m := http.MethodGet
				if rnd.IntN(5) == 0 {
					m = http.MethodHead
				}
				req, _ := http.NewRequestWithContext(ctx, m, "http://"+addr+"/"+id, nil)
				got, ok := fetchID(ft, req)
				cancel()
				if !ok {
					continue // failed or cancelled: allowed, a wrong answer is not
				}
				answered.Add(1)
				if got != id {
					t.Errorf("request %s (%s) got the answer of %q", id, m, got)
				}
			}
		})
	}
	wg.Wait()
	// Most answers are whole: a run where nearly all failed proves nothing.
	if n := answered.Load(); n < workers*each/2 {
		t.Fatalf("only %d of %d requests were answered", n, workers*each)
	}
}

// fetchID sends req and returns the request ID its answer names.
func fetchID(ft *fastTransport, req *http.Request) (string, bool) {
	resp, err := ft.RoundTrip(req)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	if req.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent {
		return resp.Header.Get("X-Id"), true
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err == nil
}

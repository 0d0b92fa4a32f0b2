package leanhttp

import (
	"bytes"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/chanlistener"
)

// TestFirstByteWait holds a new connection to the idle timeout until its
// first byte, and its first head to ReadHeaderTimeout from that byte, in
// fake time: the loop used to close a connection that had sent nothing
// ReadHeaderTimeout after the accept, so that a client that dialled
// before it had a request to send (Go's Transport parks such a
// connection, browsers preconnect) had it cut under the request it sent
// later, and a head begun late had only what was left of those 200 ms.
func TestFirstByteWait(t *testing.T) {
	const (
		headTimeout = 200 * time.Millisecond
		idleTimeout = 2 * time.Second
		// Between requests the idle deadline runs up to a tenth longer
		// (idleSlack): 2.2 s from the end of a response.
		idleAfterResponse = idleTimeout + idleTimeout/10
	)
	get := "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
	type send struct {
		at   time.Duration // from the dial
		data string
	}
	for _, tc := range []struct {
		name  string
		sends []send
		// served: the answers the connection gets; closed: when it is
		// closed, from the dial.
		served int
		closed time.Duration
	}{
		{"first byte after ReadHeaderTimeout", []send{{time.Second, get}},
			1, time.Second + idleAfterResponse},
		{"head begun late, finished within ReadHeaderTimeout of its first byte",
			[]send{{150 * time.Millisecond, "GET / HTTP/1.1\r\nHo"}, {300 * time.Millisecond, "st: a\r\n\r\n"}},
			1, 300*time.Millisecond + idleAfterResponse},
		{"head not finished within ReadHeaderTimeout of its first byte",
			[]send{{time.Second, "GET / HTTP/1.1\r\nHo"}, {time.Second + 300*time.Millisecond, "st: a\r\n\r\n"}},
			0, time.Second + headTimeout},
		{"silent past IdleTimeout", nil, 0, idleTimeout},
		{"silent until just before IdleTimeout", []send{{idleTimeout - time.Millisecond, get}},
			1, idleTimeout - time.Millisecond + idleAfterResponse},
		// A head the loop hands to the standard server (it has a body)
		// keeps the deadline from its first byte there (handoffConn).
		{"handed-off head within ReadHeaderTimeout of its first byte",
			[]send{{time.Second, "POST / HTTP/1.1\r\nHost: a\r\n"}, {time.Second + 100*time.Millisecond, "Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"}},
			1, -1}, // the standard server's idle timeout closes it: not the loop's
		{"handed-off head past ReadHeaderTimeout of its first byte",
			[]send{{time.Second, "POST / HTTP/1.1\r\nHost: a\r\n"}, {time.Second + 300*time.Millisecond, "Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"}},
			0, time.Second + headTimeout},
		// As before: the next request's head has ReadHeaderTimeout from
		// its first byte.
		{"next head not finished",
			[]send{{0, get}, {500 * time.Millisecond, "GET / HTTP/1.1\r\nHo"}},
			1, 500*time.Millisecond + headTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := New(&http.Server{
					Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						_, _ = io.Copy(io.Discard, r.Body)
						io.WriteString(w, "ok")
					}),
					ReadHeaderTimeout: headTimeout,
					IdleTimeout:       idleTimeout,
					ErrorLog:          log.New(io.Discard, "", 0),
				})
				ln := chanlistener.New("test")
				go s.ServeStd()
				go s.Serve(ln)
				defer s.Close()

				client, server := net.Pipe()
				defer client.Close()
				start := time.Now()
				ln.Put(server)
				var got bytes.Buffer
				var closed time.Duration
				done := make(chan struct{})
				go func() {
					_, _ = io.Copy(&got, client)
					closed = time.Since(start)
					close(done)
				}()
				for _, snd := range tc.sends {
					time.Sleep(snd.at - time.Since(start))
					_, _ = io.WriteString(client, snd.data)
				}
				// Well past every close the cases expect.
				time.Sleep(10*time.Second - time.Since(start))
				synctest.Wait()
				select {
				case <-done:
				default:
					t.Fatalf("still open 10 s after the dial")
				}
				if n := strings.Count(got.String(), "HTTP/1.1 200 OK"); n != tc.served {
					t.Errorf("%d answers, want %d: %q", n, tc.served, got.String())
				}
				if tc.closed >= 0 && (closed < tc.closed || closed > tc.closed+10*time.Millisecond) {
					t.Errorf("closed at %v from the dial, want %v", closed, tc.closed)
				}
				s.Close()
				client.Close()
				synctest.Wait()
			})
		})
	}
}

package leanhttp

import (
	"bufio"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/minimesh/minimesh/proxy/internal/chanlistener"
)

// deadlineConn records the read deadlines set on it.
type deadlineConn struct {
	net.Conn
	mu  sync.Mutex
	set []time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.set = append(c.set, t)
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

// TestIdleDeadlineMoves, in fake time: between requests a kept
// connection's read deadline is IdleTimeout to IdleTimeout+idleSlack from
// the end of the last response, never less, and it moves only when it
// has fallen below IdleTimeout, not after every request; a deadline set
// for anything else (a head that came in two pieces) moves at the next
// request's end. The connection closes within that window after the last
// response.
func TestIdleDeadlineMoves(t *testing.T) {
	const (
		idleTimeout = 2 * time.Second
		slack       = idleTimeout / 10
		every       = 50 * time.Millisecond
		requests    = 40 // 2 s of them: about ten moves
	)
	synctest.Test(t, func(t *testing.T) {
		s := New(&http.Server{
			Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
			ReadHeaderTimeout: time.Second,
			IdleTimeout:       idleTimeout,
			ErrorLog:          log.New(io.Discard, "", 0),
		})
		ln := chanlistener.New("test")
		go s.ServeStd()
		go s.Serve(ln)
		defer s.Close()

		client, server := net.Pipe()
		defer client.Close()
		dc := &deadlineConn{Conn: server}
		ln.Put(dc)
		br := bufio.NewReader(client)
		// After each response, the deadline in force (the last one set)
		// must leave at least IdleTimeout and at most IdleTimeout+slack.
		check := func(i int) {
			synctest.Wait() // the loop is back at its read
			dc.mu.Lock()
			dl := dc.set[len(dc.set)-1]
			dc.mu.Unlock()
			if left := time.Until(dl); left < idleTimeout || left > idleTimeout+slack {
				t.Fatalf("after request %d the read deadline is %v away, want %v to %v", i, left, idleTimeout, idleTimeout+slack)
			}
		}
		get := func(i int, pieces ...string) {
			for _, p := range pieces {
				if _, err := io.WriteString(client, p); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Millisecond)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			check(i)
		}
		head := "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
		for i := range requests {
			get(i, head)
			time.Sleep(every)
		}
		dc.mu.Lock()
		moves := len(dc.set)
		dc.mu.Unlock()
		// One at the accept, then one at the first response's end and
		// one each time the deadline falls below IdleTimeout.
		if want := 2 + int(time.Duration(requests)*(every+time.Millisecond)/slack); moves > want+1 || moves < want-2 {
			t.Errorf("%d read deadlines set over %d requests %v apart, want about %d", moves, requests, every, want)
		}
		// A head in two pieces arms ReadHeaderTimeout (1 s): its end
		// moves the deadline back to the idle one.
		get(requests, "GET / HTTP/1.1\r\nHo", "st: a\r\n\r\n")
		end := time.Now()
		_, err := br.ReadByte()
		if closed := time.Since(end); err == nil || closed < idleTimeout || closed > idleTimeout+slack {
			t.Errorf("closed %v after the last response (%v), want %v to %v", closed, err, idleTimeout, idleTimeout+slack)
		}
	})
}

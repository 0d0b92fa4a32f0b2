package outbound

// White-box tests of issue #11's timers, in a synctest bubble (fake
// clock, no real sockets): the request body watch (item 3) and the fast
// path's sweep of idle connections (item 4). They live here, not in the
// hardening_*_test.go files of package outbound_test, because they need
// the package's internals.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// failingReader yields its bytes, then err.
type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		err = f.err
	}
	return n, err
}

// TestBodyWatch: countingBody.watch calls expire once a body has not
// moved for idle: exactly at idle when nothing arrives; never before
// idle has passed since the last progress, and at most one more idle
// after it (progress is looked at once per idle); never for a body read
// to its end, a body whose read failed, or a stopped watch.
func TestBodyWatch(t *testing.T) {
	const idle = 30 * time.Second
	type step struct {
		at    time.Duration // since the watch started
		bytes int           // the app sends this many bytes; -1: the rest, then its end
	}
	for _, tc := range []struct {
		name   string
		body   string
		err    error // the read after the body's bytes fails with it (nil: EOF)
		steps  []step
		stopAt time.Duration // 0: never stopped
		// expire is when expire must be called, as a range [min, max]
		// since the watch started; never: it must not be called.
		min, max time.Duration
		never    bool
	}{
		{name: "no progress", body: "0123456789", min: idle, max: idle},
		// Idle after the last byte, exactly (before 2026-12-05 the watch
		// sampled the count every idle period: up to twice it).
		{name: "progress at half idle", body: "0123456789", steps: []step{{idle / 2, 1}},
			min: idle/2 + idle, max: idle/2 + idle},
		{name: "progress just before idle", body: "0123456789", steps: []step{{idle - time.Millisecond, 1}},
			min: 2*idle - time.Millisecond, max: 2*idle - time.Millisecond},
		{name: "steady trickle then stall", body: "0123456789", steps: func() []step {
			var s []step
			for i := 1; i <= 8; i++ {
				s = append(s, step{time.Duration(i) * idle * 9 / 10, 1})
			}
			return s
		}(), min: 8*idle*9/10 + idle, max: 8*idle*9/10 + idle},
		{name: "read to the end at once", body: "0123456789", steps: []step{{0, -1}}, never: true},
		{name: "read to the end slowly", body: "0123", steps: []step{{idle / 2, 1}, {idle, 1}, {3 * idle / 2, 1}, {2 * idle, -1}}, never: true},
		{name: "read failed", body: "01", err: errors.New("malformed chunked encoding"), steps: []step{{idle / 3, -1}}, never: true},
		{name: "stopped", body: "0123456789", stopAt: idle / 2, never: true},
		{name: "stopped after progress", body: "0123456789", steps: []step{{idle / 2, 1}}, stopAt: idle + idle/4, never: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var src io.Reader = strings.NewReader(tc.body)
				if tc.err != nil {
					src = &failingReader{src, tc.err}
				}
				// The app sends src through a pipe at the steps; the
				// transport reads all the time, as it does while the
				// upstream takes the body: the watch times only a read
				// that waits for the app.
				pr, pw := io.Pipe()
				defer pw.Close()
				b := &countingBody{ReadCloser: pr}
				start := time.Now()
				var mu sync.Mutex
				var fired []time.Duration
				stop := b.watch(idle, func() {
					mu.Lock()
					fired = append(fired, time.Since(start))
					mu.Unlock()
				})
				go func() {
					buf := make([]byte, 1)
					for {
						if _, err := b.Read(buf); err != nil {
							return
						}
					}
				}()
				for _, s := range tc.steps {
					time.Sleep(s.at - time.Since(start))
					if s.bytes < 0 {
						_, err := io.Copy(pw, src)
						pw.CloseWithError(err) // nil: EOF
					} else if _, err := io.CopyN(pw, src, int64(s.bytes)); err != nil {
						t.Fatalf("send at %v: %v", s.at, err)
					}
				}
				if tc.stopAt > 0 {
					time.Sleep(tc.stopAt - time.Since(start))
					if !stop() {
						t.Fatalf("stop at %v found the watch already over", tc.stopAt)
					}
				}
				time.Sleep(20*idle - time.Since(start))
				synctest.Wait()
				mu.Lock()
				defer mu.Unlock()
				if tc.never {
					if len(fired) != 0 {
						t.Fatalf("expire called at %v, want never", fired)
					}
					return
				}
				if len(fired) != 1 {
					t.Fatalf("expire called %d times (at %v), want once", len(fired), fired)
				}
				if fired[0] < tc.min || fired[0] > tc.max {
					t.Fatalf("expire called at %v, want within [%v, %v]", fired[0], tc.min, tc.max)
				}
				if stop() {
					t.Fatal("stop after expiry reports a watch still running")
				}
			})
		})
	}
}

// pipeUpstreams is a dial func of in-memory connections (net.Pipe) to
// HTTP/1.1 servers that answer "ok" to each request until the
// connection closes; it counts, per host, the connections dialled and
// those the transport closed.
type pipeUpstreams struct {
	mu     sync.Mutex
	dials  map[string]int
	closed map[string]int
}

func (p *pipeUpstreams) dial(_ context.Context, _, addr string) (net.Conn, error) {
	cli, srv := net.Pipe()
	p.mu.Lock()
	p.dials[addr]++
	p.mu.Unlock()
	go func() {
		defer srv.Close()
		br := bufio.NewReader(srv)
		for {
			if _, err := http.ReadRequest(br); err != nil {
				p.mu.Lock()
				p.closed[addr]++
				p.mu.Unlock()
				return
			}
			if _, err := io.WriteString(srv, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	}()
	return cli, nil
}

func (p *pipeUpstreams) counts(host string) (dials, closed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dials[host], p.closed[host]
}

// TestFastPathSweepsIdleHosts: the fast path keeps a connection to each
// of many hosts, and closes every one unused for idleTimeout, forgetting
// its host, even when those hosts are never asked for again (nothing
// else would look at their pool). A connection in use is kept; when the
// last one is gone the sweeper stops, and the next kept connection
// starts it again.
func TestFastPathSweepsIdleHosts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ups := &pipeUpstreams{dials: map[string]int{}, closed: map[string]int{}}
		ft := newFastTransport(ups.dial, http.DefaultTransport, 4)
		defer func() {
			// On failure: let the servers' goroutines end with the bubble.
			ft.mu.Lock()
			defer ft.mu.Unlock()
			for _, l := range ft.idle {
				for _, c := range l.conns {
					c.Close()
				}
			}
			if ft.sweeper != nil {
				ft.sweeper.Stop()
			}
		}()
		start := time.Now()
		host := func(i int) string { return fmt.Sprintf("host-%d:80", i) }
		get := func(h string) {
			t.Helper()
			req, err := http.NewRequest(http.MethodGet, "http://"+h+"/", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := ft.RoundTrip(req)
			if err != nil {
				t.Fatalf("GET %s: %v", h, err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(b) != "ok" {
				t.Fatalf("GET %s: %q %v", h, b, err)
			}
		}
		state := func() (hosts int, kept int, sweeping bool) {
			ft.mu.Lock()
			defer ft.mu.Unlock()
			for _, l := range ft.idle {
				kept += len(l.conns)
			}
			return len(ft.idle), kept, ft.sweeper != nil
		}
		sleepUntil := func(d time.Duration) {
			time.Sleep(d - time.Since(start))
			synctest.Wait()
		}
		check := func(when string, wantHosts int, wantSweeping bool, wantClosed map[int]int) {
			t.Helper()
			hosts, kept, sweeping := state()
			if hosts != wantHosts || kept != wantHosts || sweeping != wantSweeping {
				t.Fatalf("%s: %d hosts with %d kept connections, sweeper running %v; want %d, %d, %v",
					when, hosts, kept, sweeping, wantHosts, wantHosts, wantSweeping)
			}
			for i := range 10 {
				if _, closed := ups.counts(host(i)); closed != wantClosed[i] {
					t.Fatalf("%s: %s has had %d connections closed, want %d", when, host(i), closed, wantClosed[i])
				}
			}
		}
		all := func(n int) map[int]int {
			m := map[int]int{}
			for i := range 10 {
				m[i] = n
			}
			return m
		}

		for i := range 10 {
			get(host(i))
		}
		synctest.Wait()
		check("after one request to each of 10 hosts", 10, true, all(0))

		// host-0 is used again at 30s, on its kept connection.
		sleepUntil(30 * time.Second)
		get(host(0))
		if dials, _ := ups.counts(host(0)); dials != 1 {
			t.Fatalf("host-0 dialled %d times, want 1 (its kept connection reused)", dials)
		}

		sleepUntil(idleTimeout - time.Millisecond)
		check("just before idleTimeout", 10, true, all(0))

		// At idleTimeout the 9 others are closed and forgotten.
		sleepUntil(idleTimeout)
		wantClosed := all(1)
		wantClosed[0] = 0
		check("at idleTimeout", 1, true, wantClosed)

		// host-0's connection, last used at 30s, goes by 30s+idleTimeout
		// (the sweeper looks every idleTimeout/2 at most).
		sleepUntil(30*time.Second + idleTimeout + idleTimeout/2)
		check("idleTimeout after host-0's last use", 0, false, all(1))

		// A new kept connection starts the sweeper again.
		get(host(3))
		synctest.Wait()
		if dials, _ := ups.counts(host(3)); dials != 2 {
			t.Fatalf("host-3 dialled %d times, want 2 (its first connection was closed)", dials)
		}
		wantClosed = all(1)
		check("after a new request to host-3", 1, true, wantClosed)
		restart := time.Since(start)
		sleepUntil(restart + idleTimeout)
		wantClosed[3] = 2
		check("idleTimeout after that", 0, false, wantClosed)

		// The host whose list was forgotten last, once more: its new kept
		// connection is in the transport's lists, swept again.
		get(host(3))
		synctest.Wait()
		check("after one more request to host-3", 1, true, wantClosed)
	})
}

// TestClosedBodyReadIsNotTheAppsFault: a read of the app's body after the
// upstream transport closed it fails by the transport's doing: Go's
// HTTP/2 transport closes a cancelled request's body on a goroutine of its
// own while its writer may still read it. Before, that read's error
// ("body closed by handler") was kept as the app's bad body: an app that
// reset its stream was recorded as a 400 bad-request, not its leaving.
func TestClosedBodyReadIsNotTheAppsFault(t *testing.T) {
	for _, proto := range []string{"HTTP/1.1", "h2c"} {
		t.Run(proto, func(t *testing.T) {
			type result struct {
				err, failed error
			}
			got := make(chan result, 1)
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b := &countingBody{ReadCloser: r.Body}
				_ = b.Close()
				_, err := b.Read(make([]byte, 8))
				got <- result{err, b.failed()}
			}))
			var p http.Protocols
			p.SetHTTP1(true)
			p.SetUnencryptedHTTP2(true)
			srv.Config.Protocols = &p
			srv.Start()
			defer srv.Close()
			var cp http.Protocols
			if proto == "h2c" {
				cp.SetUnencryptedHTTP2(true)
			} else {
				cp.SetHTTP1(true)
			}
			c := &http.Client{Transport: &http.Transport{Protocols: &cp}}
			req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("0123"))
			go func() {
				if resp, err := c.Do(req); err == nil {
					resp.Body.Close()
				}
			}()
			r := <-got
			if r.err != errBodyAbandoned || r.failed != nil {
				t.Errorf("read after Close: %v, failed() = %v; want errBodyAbandoned, nil", r.err, r.failed)
			}
		})
	}
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/minimesh/minimesh/internal/refused"
)

// This file holds the fast-fail runs (a destination whose breaker is
// open) and the idle keep-alive connections' memory (-idle-conns).

// deadHostPort is the fast-fail runs' destination: the sidecar resolves
// it (--resolve) to deadAddr, where nothing listens, and its policy
// (deadPolicy) opens the breaker at the first failure for an hour.
const deadHostPort = "bench-dead:80"

// deadAddr is held (refused.Hold) for the harness's whole run: a port
// freed after a look could be taken by another process's listener.
var deadAddr = sync.OnceValue(func() string {
	a, _, err := refused.Hold()
	if err != nil {
		return "127.0.0.1:9"
	}
	return a
})

func deadPolicy() string {
	return `apiVersion: minimesh.io/v1alpha1
kind: ResiliencePolicy
metadata: {name: bench-dead}
spec:
  service: bench-dead
  timeout: 5s
  circuitBreaker:
    consecutiveFailures: 1
    openTimeout: 1h
    halfOpenRequests: 1
    failOn: [connect-failure]
`
}

// measureFastFail opens the sidecar's breaker for deadHostPort with one
// request (502, connect-failure), checks that the next is the open
// breaker's 503, then, once per round, loads that destination at -qps for
// -fastfail-t, every answer a 503 that never left the sidecar, and the
// upstream directly for as long, back to back, the order alternating.
// Both with fortio's standard client: its fast client closes the
// connection after any answer but 2xx, which would put a connect into
// every fast-failed request.
func (r *report) measureFastFail(ctx context.Context, fortio, dir, upstream string) error {
	o := r.o
	t := r.target(keyMinimesh)
	if t == nil {
		return nil
	}
	c := t.httpClient()
	resp, err := getVia(ctx, c, "http://"+t.addr+"/", deadHostPort)
	if err != nil {
		return fmt.Errorf("fast-fail: first request to %s: %w", deadHostPort, err)
	}
	first := resp.Status
	resp, err = getVia(ctx, c, "http://"+t.addr+"/", deadHostPort)
	if err != nil {
		return fmt.Errorf("fast-fail: second request to %s: %w", deadHostPort, err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Minimesh-Error") != "circuit-open" {
		return fmt.Errorf("fast-fail: after %s, the second request to %s was answered %s (X-Minimesh-Error %q), not 503 circuit-open\n%s",
			first, deadHostPort, resp.Status, resp.Header.Get("X-Minimesh-Error"), diagnose(ctx, t))
	}
	logf("fast-fail: %s's breaker is open (first request %s, then 503 circuit-open)", deadHostPort, first)
	direct := &target{key: keyDirect + ":fast-fail", name: "direct (std client)"}
	for round := 0; round < o.runs; round++ {
		ff := loadSpec{qps: o.qps, conns: o.conns, duration: o.fastFailT, res: o.resolution, addr: t.addr, host: deadHostPort,
			stdClient: true, allowInitialErrors: true}
		dl := loadSpec{qps: o.qps, conns: o.conns, duration: o.fastFailT, res: o.resolution, addr: upstream, stdClient: true}
		for i := range 2 {
			if (i+round)%2 == 0 {
				s, err := measure(ctx, fortio, dir, t, round+1, ff)
				if err != nil {
					return fmt.Errorf("fast-fail: %w", err)
				}
				// Here the right answer is 503; anything else is the error.
				s.errors = 0
				for code, n := range s.codes {
					if code != "503" {
						s.errors += n
					}
				}
				s.target = "minimesh-proxy, breaker open"
				logf("fast-fail %d/%d open breaker        p50 %s p99 %s  %.0f qps  %d not 503, %d connections", round+1, o.runs,
					ms(s.lat[50]), ms(s.lat[99]), s.qps, s.errors, s.sockets)
				r.fastFail = append(r.fastFail, s)
			} else {
				s, err := measure(ctx, fortio, dir, direct, round+1, dl)
				if err != nil {
					return fmt.Errorf("fast-fail: %w", err)
				}
				logf("fast-fail %d/%d direct (std client) p50 %s p99 %s  %.0f qps  %d errors, %d connections", round+1, o.runs,
					ms(s.lat[50]), ms(s.lat[99]), s.qps, s.errors, s.sockets)
				r.fastFailDirect = append(r.fastFailDirect, s)
			}
		}
	}
	return nil
}

// target is the target with key k, or nil.
func (r *report) target(k string) *target {
	for _, t := range r.targets {
		if t.key == k {
			return t
		}
	}
	return nil
}

// peerBins are the proxies' binaries, for the fresh instances of
// measureIdleConns.
type peerBins struct{ sidecar, nginx, haproxy, caddy string }

// idleResult is one proxy's memory with idle keep-alive connections.
type idleResult struct {
	name    string
	baseRSS int64         // VmRSS of the fresh instance before the connections
	rss     map[int]int64 // VmRSS with n connections open
	config  string        // what differs from the measured instance
}

// perConn is the RSS added per idle connection with n open, in bytes.
func (ir idleResult) perConn(n int) float64 {
	return float64(ir.rss[n]-ir.baseRSS) / float64(n)
}

// idleSettle is how long the connections sit idle before RSS is read.
const idleSettle = time.Second

// measureIdleConns starts a fresh instance of each proxy (so that memory
// freed by the load runs does not hide the connections' cost), reads its
// RSS, then opens -idle-conns keep-alive connections in turn (counts
// ascending, each count adding to the connections already open), each
// sending one request and reading its response, and reads the RSS again.
func (r *report) measureIdleConns(ctx context.Context, ps *procs, dir, upstream string, bins peerBins) error {
	o := r.o
	ns := slices.Clone([]int(o.idleConns))
	slices.Sort(ns)
	ns = slices.Compact(ns)
	most := ns[len(ns)-1]
	limit := raiseFileLimit(most)
	if limit < uint64(most)+256 {
		r.idleNote = fmt.Sprintf("skipped: the open-file limit (%d) is below %d connections; raise ulimit -n", limit, most)
		logf("idle connections: %s", r.idleNote)
		return nil
	}
	for _, t := range r.targets {
		if t.proc == nil || !t.sweeps() || !slices.Contains(allKeys, t.key) {
			continue
		}
		d := filepath.Join(dir, "idle-"+t.key)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		// Room for every connection, in each worker (nginx does not
		// spread connections evenly over its workers).
		room := most + 1024
		var fresh *target
		var err error
		var cfg string
		switch t.key {
		case keyMinimesh:
			fresh, err = startSidecarVariant(ctx, ps, bins.sidecar, d, upstream, o, "", fmt.Sprintf("--max-connections %d", room))
			cfg = fmt.Sprintf("`--max-connections %d` (default 1024)", room)
		case keyNginx:
			fresh, err = startNginx(ctx, ps, bins.nginx, d, upstream, o.workers, room, false)
			cfg = fmt.Sprintf("`worker_connections %d`: its base RSS includes the larger connection table", room)
		case keyHAProxy:
			fresh, err = startHAProxy(ctx, ps, bins.haproxy, d, upstream, o.workers, room)
			cfg = fmt.Sprintf("`maxconn %d` and `no strict-limits` (it wants 2 descriptors per connection and would not start above the open-file limit)", room)
		case keyCaddy:
			fresh, err = startCaddy(ctx, ps, bins.caddy, d, upstream)
		}
		if err != nil {
			return fmt.Errorf("idle connections: %w", err)
		}
		ir, err := idleConns(ctx, fresh, upstream, ns)
		fresh.proc.Stop()
		if err != nil {
			return fmt.Errorf("idle connections to %s: %w", t.name, err)
		}
		ir.name, ir.config = t.name, cfg
		r.idle = append(r.idle, ir)
	}
	return nil
}

// idleConns measures t's RSS idle and with each count of connections.
func idleConns(ctx context.Context, t *target, upstream string, ns []int) (idleResult, error) {
	ir := idleResult{rss: map[int]int64{}}
	sleep(ctx, idleSettle)
	u, err := t.proc.Usage()
	if err != nil {
		return ir, err
	}
	ir.baseRSS = u.RSS
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, n := range ns {
		// Open the missing connections, 32 at a time, so that the
		// proxies keep a few upstream connections, not thousands.
		sem := make(chan struct{}, 32)
		var wg sync.WaitGroup
		var firstErr error
		for i := len(conns); i < n; i++ {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				c, err := openIdle(ctx, t.addr, upstream)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					return
				}
				conns = append(conns, c)
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return ir, fmt.Errorf("%d connections: %w", n, firstErr)
		}
		sleep(ctx, idleSettle)
		if err := t.proc.Alive(); err != nil {
			return ir, err
		}
		u, err := t.proc.Usage()
		if err != nil {
			return ir, err
		}
		ir.rss[n] = u.RSS
		logf("idle connections: %-15s %6d open: RSS %s MB (idle %s MB), %.0f bytes per connection",
			t.name, n, mb(u.RSS), mb(ir.baseRSS), ir.perConn(n))
	}
	return ir, ctx.Err()
}

// openIdle connects to addr, sends one keep-alive request for the
// upstream, reads the 200 and returns the connection, idle.
func openIdle(ctx context.Context, addr, host string) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
		c.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && (resp.StatusCode != http.StatusOK || resp.Close) {
			err = fmt.Errorf("%s (Connection: close %v)", resp.Status, resp.Close)
		}
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// raiseFileLimit raises the harness's open-file limit, which the proxies
// inherit, to room for conns connections on both sides and returns the
// limit now in force. Only root raises the hard limit.
func raiseFileLimit(conns int) uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	want := uint64(2*conns + 4096)
	if l.Max < want && os.Geteuid() == 0 {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return want
		}
	}
	if l.Cur < l.Max {
		l.Cur = min(l.Max, max(l.Cur, want))
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return 0
		}
	}
	return l.Cur
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

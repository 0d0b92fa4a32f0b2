package outbound_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minimesh/minimesh/proxy/balancer"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// watchHealth answers Check at once and, when streams is set, Watch with
// a message every 100 ms for 500 ms, a long poll; without it Watch ends
// at once, OK and empty (a code failOn counts would eject the pod).
type watchHealth struct {
	healthServer
	streams bool
	watches atomic.Int64
}

func (s *watchHealth) Watch(_ *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	if !s.streams {
		return nil
	}
	s.watches.Add(1)
	for i := range 5 {
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		if err := stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
			return err
		}
	}
	return nil
}

// watchOnce opens a Watch and reads it to its end.
func watchOnce(c healthpb.HealthClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	for n := 0; ; n++ {
		if _, err := s.Recv(); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("after %d messages: %w", n, err)
		}
	}
}

// streamPods are four pods of geo-service, the fourth of which serves
// long answers (500 ms of a body or of messages) to a poll, the others an
// empty one at once: a poll is repeated until it reaches the fourth.
type streamPods struct {
	targets []balancer.Target
	polled  func() int64    // polls the fourth pod served
	calls   func(int) int64 // unary calls pod i served
	poll    func() error
	call    func() error
}

// grpcStreamPods are streamPods over gRPC: Watch polls, Check calls.
func grpcStreamPods(t *testing.T, sc *testSidecar) streamPods {
	var pods []*watchHealth
	var sp streamPods
	for i := range 4 {
		p := &watchHealth{streams: i == 3}
		pods = append(pods, p)
		sp.targets = append(sp.targets, balancer.Target{Addr: startGRPC(t, p)})
	}
	c := grpcClient(t, sc, geo)
	sp.polled = pods[3].watches.Load
	sp.calls = func(i int) int64 { return pods[i].hits.Load() }
	sp.poll = func() error { return watchOnce(c) }
	sp.call = func() error { _, err := check(c, 5*time.Second); return err }
	return sp
}

// httpStreamPods are streamPods over HTTP/1: GET /poll, a download, and
// GET /.
func httpStreamPods(t *testing.T, sc *testSidecar) streamPods {
	var sp streamPods
	var polls [4]atomic.Int64
	var calls [4]atomic.Int64
	for i := range 4 {
		u := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int64) {
			if r.URL.Path != "/poll" {
				calls[i].Add(1)
				return
			}
			if i != 3 {
				return
			}
			polls[i].Add(1)
			for range 5 {
				_, _ = w.Write([]byte("chunk\n"))
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
		})
		sp.targets = append(sp.targets, balancer.Target{Addr: u.Host()})
	}
	c := sc.Client()
	get := func(path string) error {
		resp, err := c.Get("http://" + geo + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return nil
	}
	sp.polled = polls[3].Load
	sp.calls = func(i int) int64 { return calls[i].Load() }
	sp.poll = func() error { return get("/poll") }
	sp.call = func() error { return get("/") }
	return sp
}

// TestBalanceStreamIsNotLatency: one of four pods serves long polls
// (gRPC server streams, HTTP/1 downloads, of 500 ms, asked again as each
// ends); a stream's life is how long its client reads, not how fast the
// pod answers, so its latency sample ends at its response headers
// (balancer.Endpoint.Answered). While it serves one more, unary calls go
// to all four: it must get a fair share of them, and its estimate stay
// near its peers'. Before 2026-12-07 each stream's sample was its whole
// life: the streaming pod's estimate went to 300-490 ms against its
// peers' 0.6-5 ms, and it got 2-19 of 800 calls (170-233 since).
func TestBalanceStreamIsNotLatency(t *testing.T) {
	for _, tc := range []struct {
		name string
		pods func(*testing.T, *testSidecar) streamPods
	}{
		{"grpc", grpcStreamPods},
		{"http1", httpStreamPods},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := startSidecar(t, policyDoc("g", geo, "timeout: 10s\n"), nil, withNamespace("shop"))
			sp := tc.pods(t, sc)
			sc.S.Handler().SetEndpoints(map[string][]balancer.Target{geoEDS: sp.targets})
			streamShare(t, sc, sp)
		})
	}
}

func streamShare(t *testing.T, sc *testSidecar, sp streamPods) {
	// Long polls, 3 s of streams: a poll that reaches another pod ends
	// at once, and the client asks again.
	const polls = 6
	for end := time.Now().Add(6 * time.Second); sp.polled() < polls && time.Now().Before(end); {
		if err := sp.poll(); err != nil {
			t.Fatalf("poll: %v", err)
		}
	}
	t.Logf("long polls served: %d", sp.polled())

	// One more long poll, in flight while 8 workers call: it weighs as a
	// request in flight at its pod, and nothing else.
	var before [4]int64
	for i := range before {
		before[i] = sp.calls(i)
	}
	calling := make(chan struct{})
	streaming := make(chan struct{})
	go func() {
		defer close(streaming)
		for n := sp.polled(); sp.polled() == n; {
			select {
			case <-calling:
				return
			default:
			}
			if err := sp.poll(); err != nil {
				t.Errorf("poll: %v", err)
				return
			}
		}
	}()
	const workers, per = 8, 100
	var wg sync.WaitGroup
	var fails atomic.Int64
	for range workers {
		wg.Go(func() {
			for range per {
				if err := sp.call(); err != nil {
					fails.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(calling)
	<-streaming
	if f := fails.Load(); f > 0 {
		t.Fatalf("%d of %d unary calls failed", f, workers*per)
	}
	var shares [4]int64
	for i := range shares {
		shares[i] = sp.calls(i) - before[i]
	}
	var eps []struct{ Endpoints []balancer.EndpointStatus }
	sc.getJSON("/debug/endpoints", &eps)
	if len(eps) != 1 || len(eps[0].Endpoints) != 4 {
		t.Fatalf("/debug/endpoints = %+v, want geo-service's 4 endpoints", eps)
	}
	st := eps[0].Endpoints
	t.Logf("unary calls per pod: %v; ewma: %v %v %v, streaming pod %v", shares, st[0].EWMA, st[1].EWMA, st[2].EWMA, st[3].EWMA)
	// Its fair share is 25 %, less while its long poll is in flight (a
	// request in flight doubles a cost; with peers idle, 1/6).
	if s := shares[3]; s < workers*per*15/100 {
		t.Errorf("streaming pod got %d of %d unary calls, want at least 15 %%", s, workers*per)
	}
	peers := max(st[0].EWMA, st[1].EWMA, st[2].EWMA, balancer.MinEstimate)
	if st[3].EWMA > 4*peers {
		t.Errorf("streaming pod's estimate %v, want at most 4× its peers' (%v): its streams last 500 ms", st[3].EWMA, peers)
	}
}

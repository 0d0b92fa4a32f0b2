package outbound_test

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// handoffListener is one server's share of a TCP listener that a rolling
// deployment passes from server to server (rollingGRPC): Accept takes
// the connections handed to it until Close.
type handoffListener struct {
	ch     chan net.Conn
	addr   net.Addr
	once   sync.Once
	closed chan struct{}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }

// rollingGRPC is a gRPC service on one address whose server roll
// replaces, as a rolling deployment replaces a pod: a new grpc-go server
// takes the new connections, then the old one stops gracefully
// (GracefulStop: GOAWAY, then the calls it took finish). hs answers on
// every server, so its hits count the calls any of them processed.
func rollingGRPC(t *testing.T, hs healthpb.HealthServer) (addr string, roll func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var cur atomic.Pointer[handoffListener]
	start := func() *grpc.Server {
		s := grpc.NewServer()
		healthpb.RegisterHealthServer(s, hs)
		l := &handoffListener{ch: make(chan net.Conn), addr: ln.Addr(), closed: make(chan struct{})}
		go func() { _ = s.Serve(l) }()
		cur.Store(l)
		return s
	}
	var mu sync.Mutex
	var stopping sync.WaitGroup
	s := start()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			for handed := false; !handed; {
				l := cur.Load()
				select {
				case l.ch <- c:
					handed = true
				case <-l.closed: // stopped as it was picked: the next one takes it
				}
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		s.Stop()
		mu.Unlock()
		stopping.Wait()
	})
	return ln.Addr().String(), func() {
		mu.Lock()
		defer mu.Unlock()
		old := s
		s = start()
		// It stops while the next roll may begin: a pod's drain outlasts
		// its successor's start.
		stopping.Go(old.GracefulStop)
	}
}

// TestGRPCGracefulStopRefused: a real grpc-go server that stops
// gracefully while calls go to it, as in every rolling deployment,
// refuses the calls that race its GOAWAY unprocessed: a request Go's
// transport had placed on its connection could then not send, or a
// stream above the GOAWAY's last stream ID; a new server takes the new
// connections. The calls never sent go once more whatever the policy,
// and with retryOn connect-failure the refused ones too: the app sees no
// failure, each call processed once, the breaker closed without one.
// Without retries a refused stream (its body sent: nothing is kept to
// send again) is the sidecar's UNAVAILABLE connect-failure, recorded as
// a failure (access log, metric, breaker), never a success (docs/grpc.md,
// "Retries"). Before 2026-12-07 the calls never sent failed so too,
// without retries: 7 to 15 a run, where now about one run in three has
// a failure, 1 or 2 calls; and before that each was a reset, never retried.
func TestGRPCGracefulStopRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		policy  string
		retried bool
	}{
		{"retryOn connect-failure", "timeout: 5s\nretries:\n  attempts: 2\n  retryOn: [connect-failure]\n  backoff: {base: 1ms, max: 5ms}\n", true},
		// A breaker that opens on the failures would answer the next
		// calls itself: they are the failures counted here.
		{"no retries", "timeout: 5s\ncircuitBreaker: {consecutiveFailures: 1000}\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := &healthServer{}
			addr, roll := rollingGRPC(t, hs)
			var log accessLog
			sc := startSidecar(t, policyDoc("health", healthSvc, tc.policy), resolve(addr, healthSvc), withAccessLog(&log))
			c := grpcClient(t, sc, healthSvc)

			// Callers call in a loop, up to maxCalls in all, until told to
			// stop; the stops below wait for calls to have gone between two.
			const callers, maxCalls = 16, 100000
			var calls, ok, failed, sent atomic.Int64
			var firstErr atomic.Pointer[error]
			done := make(chan struct{})
			var wg sync.WaitGroup
			for range callers {
				wg.Go(func() {
					for calls.Add(1) <= maxCalls {
						select {
						case <-done:
							return
						default:
						}
						if _, err := check(c, 5*time.Second); err != nil {
							failed.Add(1)
							firstErr.CompareAndSwap(nil, &err)
							if strings.Contains(err.Error(), "refused the request before processing it") && strings.Contains(err.Error(), "after Request.Body was written") {
								sent.Add(1) // refused on a stream: its body went
							}
						} else {
							ok.Add(1)
						}
					}
				})
			}
			// Roll the server until calls raced a stop, seen in the
			// retries' metric (or failed), at most maxStops times or
			// for two minutes, each after 100 more calls. Without retries
			// the metric counts the calls never sent, sent again. It took
			// 1 to 55 stops in 30 runs under -race on a 2-core VM (mean
			// 15, about 0.1 s a stop): past 400, odds of about 1e-11.
			const maxStops = 400
			retried := func() float64 {
				return sc.metric("minimesh_retries_total", "destination", healthSvc, "reason", "connect-failure")
			}
			races := 3.0 // the calls to see sent again
			if !tc.retried {
				races = 1 // the calls never sent only, fewer
			}
			// A refused stream's failure, rarer, is no race of the kind
			// sought: the rolls go on after it.
			raced := func() bool { return failed.Load() > sent.Load() || retried() >= races }
			stops := 0
			start := time.Now()
			for ; stops < maxStops && time.Since(start) < 2*time.Minute && !raced(); stops++ {
				from := ok.Load() + failed.Load()
				for ok.Load()+failed.Load() < from+100 && calls.Load() <= maxCalls && time.Since(start) < 2*time.Minute {
					time.Sleep(time.Millisecond) // calls in flight on the server to stop
				}
				roll()
			}
			close(done)
			wg.Wait()
			t.Logf("%d stops in %v: %d calls answered, %d failed, %v sent again", stops, time.Since(start).Round(time.Millisecond), ok.Load(), failed.Load(), retried())
			if tc.retried && failed.Load() > 0 || failed.Load() != sent.Load() {
				t.Fatalf("the app saw %d failures (%d of them refused streams not retried), the first %v; want none but those: a call never sent, or refused and retried, goes to the new server", failed.Load(), sent.Load(), *firstErr.Load())
			}
			if !raced() {
				t.Fatalf("no call was refused unprocessed in %d graceful stops (%d calls): the test proves nothing", stops, ok.Load())
			}
			if n := hs.hits.Load(); n != ok.Load() {
				t.Errorf("the servers processed %d calls, want %d, the calls answered: each once", n, ok.Load())
			}
			// Every call's line says OK but a refused one's (no other
			// result hides a failure).
			var unavailable int64
			for _, e := range log.wait(t, int(ok.Load()+failed.Load()), 10*time.Second) {
				switch {
				case e.GRPCStatus == "OK" && e.Error == "":
				case e.GRPCStatus == "UNAVAILABLE" && e.Error == "connect-failure":
					unavailable++
				default:
					t.Errorf("access log %+v: want OK, or UNAVAILABLE connect-failure", e)
				}
			}
			if unavailable != failed.Load() {
				t.Errorf("%d UNAVAILABLE connect-failure lines for %d failures", unavailable, failed.Load())
			}
			// A refused try that was sent again counts neither way for the
			// breaker (heldVerdict): a burst of them opened it. One that is
			// the app's answer is the failure it is answered as.
			if b := sc.breaker(healthSvc); int64(b.Counts.TotalFailures) != failed.Load() || int64(b.Counts.TotalSuccesses) != ok.Load() {
				t.Errorf("breaker %s, counts %+v: want %d successes and %d failures", b.State, b.Counts, ok.Load(), failed.Load())
			}
			for code, want := range map[string]int64{"OK": ok.Load(), "UNAVAILABLE": failed.Load()} {
				if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", code); got != float64(want) {
					t.Errorf("minimesh_grpc_requests_total{grpc_code=%s} = %v, want %d", code, got, want)
				}
			}
		})
	}
}

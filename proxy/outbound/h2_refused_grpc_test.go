package outbound_test

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcstatus "google.golang.org/grpc/status"
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
// refuses the calls that race its GOAWAY unprocessed (the stream above
// the GOAWAY's last stream ID, or a request Go's transport then could
// not send); a new server takes the new connections. With retryOn
// connect-failure the sidecar sends those calls again, and the app sees
// no failure, each call processed once; without retries such a call is
// the sidecar's UNAVAILABLE connect-failure, recorded as a failure
// (access log, metric), never a success (docs/grpc.md, "Retries").
// Before, such a call was a reset, never retried.
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
			const callers, maxCalls = 16, 60000
			var calls, ok, failed, refused atomic.Int64
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
							if strings.Contains(err.Error(), "refused the request before processing it") {
								refused.Add(1)
							}
						} else {
							ok.Add(1)
						}
					}
				})
			}
			// Roll the server until calls raced a stop (3 for the retries,
			// seen in their metric; 1 refused call without), at most
			// maxStops times or for a minute (it took 2 to 96 stops, 0.1 to
			// 8 s under -race, on a 2-core VM), each after 100 more calls.
			const maxStops = 150
			raced := func() bool {
				if tc.retried {
					return failed.Load() > 0 || sc.metric("minimesh_retries_total", "destination", healthSvc, "reason", "connect-failure") >= 3
				}
				return refused.Load() > 0
			}
			stops := 0
			start := time.Now()
			for ; stops < maxStops && time.Since(start) < time.Minute && !raced(); stops++ {
				from := ok.Load() + failed.Load()
				for ok.Load()+failed.Load() < from+100 && calls.Load() <= maxCalls && time.Since(start) < time.Minute {
					time.Sleep(time.Millisecond) // calls in flight on the server to stop
				}
				roll()
			}
			close(done)
			wg.Wait()
			retries := sc.metric("minimesh_retries_total", "destination", healthSvc)
			t.Logf("%d stops in %v: %d calls answered, %d failed, %v retries", stops, time.Since(start).Round(time.Millisecond), ok.Load(), failed.Load(), retries)
			if tc.retried && failed.Load() > 0 {
				t.Fatalf("the app saw %d failures, the first %v; want none: a call the stopping server refused goes to the new one", failed.Load(), *firstErr.Load())
			}
			if !raced() {
				t.Fatalf("no call was refused unprocessed in %d graceful stops (%d calls, %d failed otherwise): the test proves nothing", stops, ok.Load()+failed.Load(), failed.Load())
			}
			if n := hs.hits.Load(); n != ok.Load() {
				t.Errorf("the servers processed %d calls, want %d, the calls answered: each once", n, ok.Load())
			}
			total := int(ok.Load() + failed.Load())
			if tc.retried {
				// Every call's line says OK (no other result hides a failure).
				for _, e := range log.wait(t, total, 10*time.Second) {
					if e.GRPCStatus != "OK" || e.Error != "" {
						t.Fatalf("access log %+v, want OK", e)
					}
				}
				// A refused try that was retried counts neither way for the
				// breaker: a burst of them opened it (heldVerdict).
				if b := sc.breaker(healthSvc); b.State != "closed" || b.Counts.TotalFailures != 0 || int64(b.Counts.TotalSuccesses) != ok.Load() {
					t.Errorf("breaker %s, counts %+v: want closed, %d successes and no failure", b.State, b.Counts, ok.Load())
				}
				return
			}
			if b := sc.breaker(healthSvc); int64(b.Counts.TotalFailures) != failed.Load() || int64(b.Counts.TotalSuccesses) != ok.Load() {
				t.Errorf("breaker counts %+v: want %d failures, %d successes", b.Counts, failed.Load(), ok.Load())
			}
			// A refused call is a failure, UNAVAILABLE connect-failure; one
			// whose stream was open on the connection as it closed is a
			// reset: its headers went. (Before resendBody, Go's transport
			// also failed, rarely, a call it had placed on the closing
			// connection and resent on another with the body it had
			// closed: "ReverseProxy does an invalid Read on closed Body".)
			var unavailable, resets int64
			for _, e := range log.wait(t, total, 10*time.Second) {
				switch {
				case e.GRPCStatus == "OK" && e.Error == "":
				case e.GRPCStatus == "UNAVAILABLE" && e.Error == "connect-failure":
					unavailable++
				case e.GRPCStatus == "UNAVAILABLE" && e.Error == "reset":
					resets++
				default:
					t.Errorf("access log %+v: want OK, or UNAVAILABLE connect-failure", e)
				}
			}
			if unavailable != refused.Load() || unavailable+resets != failed.Load() || grpcstatus.Code(*firstErr.Load()) != codes.Unavailable {
				t.Errorf("%d UNAVAILABLE connect-failure and %d reset lines for %d failures, %d of them refused (the first %v)", unavailable, resets, failed.Load(), refused.Load(), *firstErr.Load())
			}
			if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", "UNAVAILABLE"); got != float64(failed.Load()) {
				t.Errorf("minimesh_grpc_requests_total{grpc_code=UNAVAILABLE} = %v, want %d", got, failed.Load())
			}
			if got := sc.metric("minimesh_grpc_requests_total", "destination", healthSvc, "grpc_code", "OK"); got != float64(ok.Load()) {
				t.Errorf("minimesh_grpc_requests_total{grpc_code=OK} = %v, want %d", got, ok.Load())
			}
		})
	}
}

package outbound

import (
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
)

// replayServer answers /warm once warm requests have arrived together
// (so that each came on its own connection and the client keeps that
// many), and drops /crash without an answer, as an app that crashes on
// it does, the first crashes times (-1: always). runs counts /crash
// requests read, closed the connections closed after a warm answer when
// closeWarm is set.
type replayServer struct {
	addr    string
	conns   *atomic.Int32
	runs    atomic.Int32
	closed  sync.WaitGroup
	arrived sync.WaitGroup
}

func newReplayServer(t *testing.T, warm int, crashes int32, closeWarm bool) *replayServer {
	s := &replayServer{}
	s.arrived.Add(warm)
	if closeWarm {
		s.closed.Add(warm)
	}
	s.addr, s.conns = rawRequests(t, func(c net.Conn, _ int, req *http.Request) bool {
		_, _ = io.Copy(io.Discard, req.Body)
		switch req.URL.Path {
		case "/warm":
			s.arrived.Done()
			s.arrived.Wait()
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			if closeWarm {
				c.Close() // the server's idle close, racing the client's reuse
				s.closed.Done()
				return false
			}
		case "/crash":
			if n := s.runs.Add(1); crashes < 0 || n <= crashes {
				return false // dropped without an answer
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		return true
	})
	return s
}

// warmFast opens n kept connections of ft to s at once.
func warmFast(t *testing.T, ft *fastTransport, s *replayServer, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, "http://"+s.addr+"/warm", nil)
			resp, err := ft.RoundTrip(req)
			if err != nil {
				t.Errorf("warm: %v", err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	wg.Wait()
}

// TestFastPathWrittenRequestReplayedOnce: a request the upstream drops
// without an answer after it was written on a kept connection (a crash
// on that request) is written again at most once, on a new connection,
// never once per kept connection (it ran 5 times with 4 kept).
func TestFastPathWrittenRequestReplayedOnce(t *testing.T) {
	for _, tc := range []struct {
		name, method, key string
		crashes           int32 // -1: every time
		wantRuns          int32
		wantOK            bool
	}{
		{"GET always crashes", http.MethodGet, "", -1, 2, false},
		{"HEAD always crashes", http.MethodHead, "", -1, 2, false},
		{"POST with Idempotency-Key always crashes", http.MethodPost, "Idempotency-Key", -1, 2, false},
		{"POST not replayed", http.MethodPost, "", -1, 1, false},
		{"GET crashes once", http.MethodGet, "", 1, 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const warm = 4
			s := newReplayServer(t, warm, tc.crashes, false)
			ft := newTestFast()
			defer ft.CloseIdleConnections()
			warmFast(t, ft, s, warm)
			if n := s.conns.Load(); n != warm {
				t.Fatalf("%d connections after the warm-up, want %d", n, warm)
			}
			req, _ := http.NewRequest(tc.method, "http://"+s.addr+"/crash", nil)
			if tc.key != "" {
				req.Header.Set(tc.key, "k")
			}
			resp, err := ft.RoundTrip(req)
			if resp != nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if (err == nil) != tc.wantOK {
				t.Errorf("RoundTrip: %v %v, want success %v", resp, err, tc.wantOK)
			}
			if got := s.runs.Load(); got != tc.wantRuns {
				t.Errorf("the upstream ran /crash %d times, want %d", got, tc.wantRuns)
			}
			if tc.wantRuns == 2 {
				if got := s.conns.Load(); got != warm+1 {
					t.Errorf("%d connections, want %d: the replay goes on a new one", got, warm+1)
				}
			}
		})
	}
}

// TestFastPathKeepAliveRaceStillRetried: kept connections the upstream
// closed while idle, just before their reuse, are passed over (nothing
// was written on them, or what was is replayable) and the request
// succeeds on a new connection, run once, even one that is never
// replayed (POST without a body).
func TestFastPathKeepAliveRaceStillRetried(t *testing.T) {
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			const warm = 4
			s := newReplayServer(t, warm, 0, true)
			ft := newTestFast()
			defer ft.CloseIdleConnections()
			warmFast(t, ft, s, warm)
			s.closed.Wait()
			req, _ := http.NewRequest(method, "http://"+s.addr+"/crash", nil)
			resp, err := ft.RoundTrip(req)
			if err != nil {
				t.Fatalf("RoundTrip after the idle closes: %v", err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("status %d, want 200", resp.StatusCode)
			}
			if got := s.runs.Load(); got != 1 {
				t.Errorf("the upstream ran the request %d times, want 1", got)
			}
		})
	}
}

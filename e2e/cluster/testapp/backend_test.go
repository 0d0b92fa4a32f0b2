package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// pipeListener hands out the server ends of in-memory connections, which
// synctest sees as durably blocked: the bubble's clock then moves only
// when every goroutine waits, so the drain is tested to the millisecond
// without a sleep.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// dial connects to the listener; refused once it is closed, as a closed
// port is.
func (l *pipeListener) dial(context.Context, string, string) (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case l.conns <- s:
		return c, nil
	case <-l.closed:
		return nil, syscall.ECONNREFUSED
	}
}

// TestServeDrains: after SIGTERM `testapp serve` keeps serving for the
// delay, then answers the requests in flight before it returns (and the
// process exits), within the timeout. It used to return as soon as the
// shutdown began, 3 s after SIGTERM, cutting a request still in flight.
func TestServeDrains(t *testing.T) {
	const delay, timeout = 3 * time.Second, 5 * time.Second
	// http.Server.Shutdown looks for connections gone idle at most this
	// far apart (its poll interval doubles up to 500 ms, with jitter).
	const poll = 500 * time.Millisecond
	tests := []struct {
		name string
		// sent: when the request is sent, from SIGTERM (negative: before);
		// slow: how long the backend takes to answer it.
		sent, slow time.Duration
		// wantStatus is the request's status (0: refused); answered says
		// whether it is answered when run returns.
		wantStatus int
		answered   bool
		// run returns from wantReturn after SIGTERM to poll later.
		wantReturn time.Duration
		wantErr    bool
	}{
		{"in flight at SIGTERM, answered after the delay", -time.Second, 6 * time.Second, http.StatusOK, true, 5 * time.Second, false},
		{"sent during the delay", 2 * time.Second, 2 * time.Second, http.StatusOK, true, 4 * time.Second, false},
		{"answered before SIGTERM", -time.Second, 0, http.StatusOK, true, delay, false},
		{"sent after the delay: refused", 4 * time.Second, 0, 0, false, delay, false},
		// The process exits with the request unanswered: the timeout
		// bounds how long a pod takes to stop.
		{"slower than the timeout", 0, 10 * time.Second, http.StatusOK, false, delay + timeout, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ln := newPipeListener()
				b := newBackend()
				b.delay = tt.slow
				stop := make(chan os.Signal, 1)
				sigAt := time.Now().Add(max(-tt.sent, 0))
				status := make(chan int, 1)
				tr := &http.Transport{DialContext: ln.dial}
				defer tr.CloseIdleConnections()
				go func() {
					time.Sleep(max(tt.sent, 0))
					resp, err := (&http.Client{Transport: tr}).Get("http://backend/slow")
					if err != nil {
						status <- 0
						return
					}
					defer resp.Body.Close()
					if _, err := io.ReadAll(resp.Body); err != nil {
						status <- -1
						return
					}
					status <- resp.StatusCode
				}()
				ret := make(chan error, 1)
				go func() { ret <- run(ln, b, nil, stop, delay, timeout) }()
				time.Sleep(max(-tt.sent, 0))
				stop <- syscall.SIGTERM

				err := <-ret
				returned := time.Since(sigAt)
				if returned < tt.wantReturn || returned > tt.wantReturn+poll {
					t.Errorf("run returned %v after SIGTERM, want %v (+ up to %v)", returned, tt.wantReturn, poll)
				}
				if (err != nil) != tt.wantErr {
					t.Errorf("run: %v, want an error: %v", err, tt.wantErr)
				}
				// What the client still has to do with the bytes it
				// received, it does now, before the process would exit.
				synctest.Wait()
				var got int
				select {
				case got = <-status:
					if !tt.answered {
						t.Errorf("answered (%d) before run returned, want it unanswered", got)
					}
				default:
					if tt.answered {
						t.Errorf("run returned %v after SIGTERM with the request unanswered: the exit cuts it", returned)
					}
					got = <-status // the test's process goes on: let it end
				}
				if got != tt.wantStatus {
					t.Errorf("status %d, want %d", got, tt.wantStatus)
				}
			})
		})
	}
}

// TestServeFailsToServe: an error from the listener, other than the
// shutdown's, is run's error.
func TestServeFailsToServe(t *testing.T) {
	ln := newPipeListener()
	ln.Close()
	err := run(ln, newBackend(), nil, make(chan os.Signal), 0, 0)
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("run: %v, want %v", err, net.ErrClosed)
	}
}
